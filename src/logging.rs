//! Log output: `text` (human-readable, colour only on a terminal and never
//! with `NO_COLOR`) or `json` (one object per line, stable field names),
//! the level from `WSEDGE_LOG` (an `EnvFilter` directive; a bad one is an
//! error at start, not silence) or `[log] level`.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-03T16:55:16Z  INFO wsedge-worker-0 wsedge::session: closed: ... client=...`
    #[default]
    Text,
    /// `{"timestamp":"...","level":"INFO","threadName":"wsedge-worker-0","message":"...","client":"..."}`
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `format`.
    pub format: LogFormat,
    /// `level`: an `EnvFilter` directive (`info`, `debug`,
    /// `wsedge::session=debug,info`); `WSEDGE_LOG` overrides it.
    pub level: String,
    /// `access`: one line per connection when it ends, and one per refused
    /// handshake (at `info`).
    pub access: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
            access: true,
        }
    }
}

/// The filter: `WSEDGE_LOG` when set, else `level`. A directive that does
/// not parse is an error naming where it came from.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    let (value, from) = match std::env::var("WSEDGE_LOG") {
        Ok(v) => (v, "WSEDGE_LOG"),
        Err(std::env::VarError::NotPresent) => (level.to_string(), "[log] level"),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("WSEDGE_LOG is not valid UTF-8".into());
        }
    };
    directives(&value, from)
}

/// Checks a `[log] level` value.
pub fn check_level(level: &str) -> Result<(), String> {
    directives(level, "[log] level").map(|_| ())
}

fn directives(value: &str, from: &str) -> Result<EnvFilter, String> {
    // A bare word that is not a level is a target name to the filter,
    // which then shows nothing else: most likely a typo, so say so.
    for d in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = ["trace", "debug", "info", "warn", "error", "off"]
            .iter()
            .any(|l| d.eq_ignore_ascii_case(l));
        if !d.contains('=') && !d.contains('[') && !level && !d.starts_with("wsedge") {
            return Err(format!(
                "{from} {value:?}: {d:?} is neither a level (trace, debug, info, warn, error, off) nor TARGET=LEVEL"
            ));
        }
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(value)
        .map_err(|e| {
            format!(
                "{from} {value:?}: {e} (e.g. \"info\", \"debug\", \"wsedge::session=debug,info\")"
            )
        })
}

/// Whether text logs get colour: stdout is a terminal and `NO_COLOR` is
/// unset or empty (<https://no-color.org>).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Call once, before the workers start.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = filter(&settings.level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_thread_names(true);
    let done = match settings.format {
        LogFormat::Text => builder.with_ansi(colour()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    done.map_err(|e| format!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn bad_levels_are_errors() {
        // Only when WSEDGE_LOG is unset (the test binary does not set it).
        if std::env::var_os("WSEDGE_LOG").is_none() {
            assert!(filter("info").is_ok());
            assert!(filter("wsedge::session=debug,info").is_ok());
            let e = filter("wsedge=verbose").unwrap_err();
            assert!(e.contains("[log] level"), "{e}");
            assert!(
                filter("garbage").is_err(),
                "a bare word silences everything"
            );
            assert!(filter("WARN").is_ok());
        }
    }
}
