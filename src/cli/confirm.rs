//! Confirmation before destructive actions (purge, discard): asked on a
//! terminal unless `--yes`; without a terminal, `--yes` is required.

use std::io::{BufRead, IsTerminal, Write};

use super::error::CliError;

/// Asks `question` on stderr and reads the answer from stdin.
pub fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    decide(question, yes, tty, || {
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map(|_| line)
    })
}

fn decide(
    question: &str,
    yes: bool,
    tty: bool,
    ask: impl FnOnce() -> std::io::Result<String>,
) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !tty {
        return Err(CliError::NotConfirmed(format!(
            "{} needs confirmation and stdin is not a terminal: pass --yes",
            question.trim_end_matches('?')
        )));
    }
    let answer = ask().map_err(|e| CliError::NotConfirmed(format!("no answer: {e}")))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::NotConfirmed(
            "not confirmed; nothing was changed".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_skips_the_question_and_no_terminal_refuses() {
        let never = || -> std::io::Result<String> { panic!("must not ask") };
        assert!(decide("Purge q?", true, false, never).is_ok());
        let e = decide("Purge q?", false, false, never).unwrap_err();
        assert!(e.to_string().contains("--yes"), "{e}");
        assert_eq!(e.exit_code(), super::super::error::exit::NOT_CONFIRMED);
    }

    #[test]
    fn only_yes_confirms_on_a_terminal() {
        assert!(decide("q?", false, true, || Ok("y\n".into())).is_ok());
        assert!(decide("q?", false, true, || Ok(" YES \n".into())).is_ok());
        for answer in ["\n", "n\n", "nope\n", ""] {
            assert!(
                decide("q?", false, true, || Ok(answer.into())).is_err(),
                "{answer:?}"
            );
        }
    }
}
