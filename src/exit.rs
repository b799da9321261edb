//! Process exit codes, in one place.

/// How `payctl` ends.
///
/// | code | meaning |
/// |------|---------|
/// | 0    | done |
/// | 1    | ran, and the answer is no (a transfer was rejected, a lookup found nothing) |
/// | 2    | error or usage: bad input, a service unreachable |
/// | 3    | a threshold crossed (`groups lag --max-lag`), or partly done: the run finished, but some work is left for the next one (`payments process` with payments the processor has not answered) |
/// | 130  | interrupted before the work was done |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Done,
    No,
    Error,
    PartlyDone,
    Interrupted,
}

impl Exit {
    /// The number the shell sees.
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::No => 1,
            Exit::Error => 2,
            Exit::PartlyDone => 3,
            Exit::Interrupted => 130,
        }
    }
}

/// An error that means "the answer is no" (exit 1) rather than "it broke"
/// (exit 2): a rejected transfer, an account that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A refusal with `message`, as an error to return.
pub fn refuse(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refusal(message.into()))
}

/// Work stopped short by SIGINT/SIGTERM (exit 130), after saying how far it got.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// A run that did what it could and left some work for the next run
/// (exit 3), so a cron job notices; its summary has been printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PartlyDone(pub String);

/// A check that ran and found a threshold crossed (exit 3), such as
/// `groups lag --max-lag`; the figures have been printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ThresholdCrossed(pub String);

/// The exit for an error: refusals are 1, partly done runs 3, interruptions
/// 130, everything else 2.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    if error.chain().any(|cause| cause.is::<Refusal>()) {
        Exit::No
    } else if error
        .chain()
        .any(|cause| cause.is::<PartlyDone>() || cause.is::<ThresholdCrossed>())
    {
        Exit::PartlyDone
    } else if error.chain().any(|cause| cause.is::<Interrupted>()) {
        Exit::Interrupted
    } else {
        Exit::Error
    }
}

/// What a second interrupt, which exits at once, would leave behind.
static ABANDON_NOTE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Says (or, with `None`, stops saying) what exiting right now would leave
/// half done, for the binary to print when a second interrupt comes.
pub fn set_abandon_note(note: Option<String>) {
    *ABANDON_NOTE.lock().unwrap_or_else(|e| e.into_inner()) = note;
}

/// The note set by [`set_abandon_note`], if any.
pub fn abandon_note() -> Option<String> {
    ABANDON_NOTE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}
