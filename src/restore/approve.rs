//! Approval gates: on a terminal the user types a word (`RESTORE`, `SWAP`)
//! to go on; `--yes` approves for automation; without a terminal and
//! without `--yes`, pgkeep refuses instead of guessing.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::{Error, ErrorKind, Result};

/// Ask for `word` before doing `what`. `yes` approves without asking.
pub async fn gate(word: &'static str, what: String, yes: bool) -> Result<()> {
    if yes {
        tracing::info!(gate = word, "approved by --yes");
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::config(format!("refusing to {what} without approval: no terminal to ask on")).with_hint("pass --yes to approve in automation"));
    }
    let answer = tokio::task::spawn_blocking(move || {
        let mut err = std::io::stderr();
        let _ = write!(err, "\nAbout to {what}.\nType {word} to continue: ");
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| Error::internal(format!("prompt failed: {e}")))?
    .map_err(|e| Error::new(ErrorKind::Aborted, "cannot read the approval").with_source(e))?;
    if answer.trim() == word {
        tracing::info!(gate = word, "approved at the terminal");
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Aborted, format!("not approved (expected {word}); nothing was changed")))
    }
}
