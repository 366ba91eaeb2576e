//! Publishing signed releases to the client's own S3-compatible object storage, and reading them back
//! where they lie. In data-flow order: `location.rs` (the bucket layout), `profile.rs` (credentials
//! the standard AWS ways), `client.rs` (the S3 client behind a synchronous API), `journal.rs` and
//! `multipart.rs` (resumable multipart uploads), `channel.rs` (the channel pointer and the
//! conditional-put probe), `publish.rs` (the publishing order), `source.rs` (a release in a bucket as
//! a verification source for sign/verify.rs), `stage_cache.rs` (the stage cache's shared store), and `garage.rs` (a loopback store for tests and bench).

pub mod channel;
pub mod client;
pub mod garage;
pub mod journal;
pub mod location;
pub mod multipart;
pub mod profile;
pub mod publish;
pub mod source;
pub mod stage_cache;
