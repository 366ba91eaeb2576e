//! `cargo xtask keygen`: a fresh minisign-format key pair, DIR/nodeimg.pub and DIR/nodeimg.key (0600);
//! with `--secure-boot`, a Secure Boot key set instead (sign/secure_boot.rs).

use super::Global;
use crate::sign::minisign::{write_key_pair, SECRET_KEY_FILE};
use crate::sign::secure_boot;
use crate::util::{host, progress};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Directory for the keys (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace existing keys there
    #[arg(long)]
    pub force: bool,
    /// Make a Secure Boot key set instead: PK, KEK and db keys (*.key, mode 0600) with their X.509
    /// certificates (*.crt), EFI signature lists (*.esl) and the signed updates firmware enrols
    /// (PK.auth, KEK.auth, db.auth), and owner.guid. Build with it: `build-image --secure-boot-keys DIR`
    #[arg(long)]
    pub secure_boot: bool,
    /// With --secure-boot: the certificates' common names are "<NAME> PK", "<NAME> KEK", "<NAME> db"
    #[arg(long, value_name = "NAME", default_value = "nodeimg", requires = "secure_boot")]
    pub name: String,
}

pub fn run(global: &Global, args: &KeygenArgs) -> Result<()> {
    if args.secure_boot {
        host::ensure(&secure_boot::requirements())?;
        let set = secure_boot::generate(&args.out, &args.name, args.force)?;
        if global.json {
            let files: Vec<_> =
                set.files.iter().map(|(path, secret)| serde_json::json!({"file": path, "secret": secret})).collect();
            println!("{}", serde_json::json!({"dir": set.dir, "owner_guid": set.owner_guid, "files": files}));
        } else {
            progress::note(format!(
                "wrote a Secure Boot key set to {} (owner GUID {}): PK, KEK and db certificates, signature lists and \
                 .auth updates; the *.key files are mode 0600: keep PK.key and KEK.key offline, and give builds \
                 db.key (or ${})",
                set.dir.display(),
                set.owner_guid,
                crate::uki::secure_boot::DB_KEY_ENV
            ));
        }
        return Ok(());
    }
    let (public_path, key_id) = write_key_pair(&args.out, args.force)?;
    if global.json {
        println!("{}", serde_json::json!({"public_key": public_path, "key_id": key_id.to_string()}));
    } else {
        progress::note(format!(
            "wrote public key {} (key id {key_id}) and its secret key {} (mode 0600, keep it private)",
            public_path.display(),
            args.out.join(SECRET_KEY_FILE).display()
        ));
    }
    Ok(())
}
