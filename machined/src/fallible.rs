//! Errors as machined carries them: a line of text saying what was being done and why it failed,
//! printed on the console before machined powers off.

use std::io;

pub type Fallible<T> = Result<T, String>;

/// Adds what was being done to an io::Error (whose Display carries the errno text).
pub trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Fallible<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Fallible<T> {
        self.map_err(|e| format!("{}: {}", what(), e))
    }
}
