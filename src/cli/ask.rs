//! Approvals for `devset run`: decided by `--approve`/`--reject`, or asked on the terminal.

use crate::engine::approval::{ApprovalAsk, Approvals, Verdict};
use futures::future::BoxFuture;
use indicatif::MultiProgress;
use std::io::{BufRead, IsTerminal, Write};
use tokio::sync::Mutex;

/// What `--approve` / `--reject` say: a decision for every stage (`*`) or for named stages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Preset {
    pub approve: Vec<String>,
    pub reject: Vec<String>,
}

impl Preset {
    /// The preset decision on `stage`: `Some(true)` approve, `Some(false)` reject.
    pub fn decision(&self, stage: &str) -> Option<bool> {
        let names = |list: &[String]| list.iter().any(|s| s == stage || s == "*");
        if self.reject.iter().any(|s| s == stage) {
            Some(false)
        } else if self.approve.iter().any(|s| s == stage) {
            Some(true)
        } else if names(&self.reject) {
            Some(false)
        } else if names(&self.approve) {
            Some(true)
        } else {
            None
        }
    }
}

/// Whether the terminal can be asked.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal()
}

/// The user of a local run's decisions: `$USER` on this machine.
fn local_user() -> String {
    std::env::var("USER")
        .map(|u| format!("local:{u}"))
        .unwrap_or_else(|_| "local".into())
}

/// Decides from the preset, or asks on the terminal, one question at a time.
pub struct TerminalApprovals {
    pub preset: Preset,
    pub multi: MultiProgress,
    /// One question on the terminal at a time.
    pub asking: Mutex<()>,
}

impl Approvals for TerminalApprovals {
    fn decide<'a>(&'a self, stage: &'a str, ask: &'a ApprovalAsk) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if let Some(approved) = self.preset.decision(stage) {
                let flag = if approved { "--approve" } else { "--reject" };
                return Verdict {
                    approved,
                    user: local_user(),
                    comment: Some(format!("decided by {flag}")),
                    time: jiff::Timestamp::now(),
                };
            }
            let _one = self.asking.lock().await;
            let question = format!(
                "stage {stage:?} asks: {}\napprove? [y/N] (add a comment after the answer, e.g. \"y looks good\"): ",
                ask.message
            );
            let multi = self.multi.clone();
            let answer = tokio::task::spawn_blocking(move || {
                multi.suspend(|| {
                    eprint!("{question}");
                    let _ = std::io::stderr().flush();
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).map(|_| line)
                })
            })
            .await;
            let line = match answer {
                Ok(Ok(l)) => l,
                _ => String::new(),
            };
            let (approved, comment) = parse_answer(&line);
            Verdict {
                approved,
                user: local_user(),
                comment,
                time: jiff::Timestamp::now(),
            }
        })
    }
}

/// `y`/`yes` (any case) approves; anything else rejects. What follows the first word is the
/// comment.
fn parse_answer(line: &str) -> (bool, Option<String>) {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let approved = matches!(word.to_ascii_lowercase().as_str(), "y" | "yes");
    let rest = rest.trim();
    (approved, (!rest.is_empty()).then(|| rest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_presets() {
        assert_eq!(parse_answer("y\n"), (true, None));
        assert_eq!(
            parse_answer("YES  ship it\n"),
            (true, Some("ship it".into()))
        );
        assert_eq!(parse_answer("\n"), (false, None));
        assert_eq!(
            parse_answer("n too early"),
            (false, Some("too early".into()))
        );
        let p = Preset {
            approve: vec!["*".into()],
            reject: vec!["b".into()],
        };
        assert_eq!(p.decision("a"), Some(true));
        assert_eq!(p.decision("b"), Some(false));
        assert_eq!(Preset::default().decision("a"), None);
        let p = Preset {
            approve: vec!["a".into()],
            reject: vec!["*".into()],
        };
        assert_eq!(p.decision("a"), Some(true));
        assert_eq!(p.decision("z"), Some(false));
    }
}
