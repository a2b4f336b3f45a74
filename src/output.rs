//! Everything devserver prints, in one place.
//!
//! stdout carries data only (URLs, lists, JSON), so scripts can consume it;
//! messages for people (progress, warnings, errors) go to stderr. `-q`
//! silences everything on stderr except errors. A closed stdout (`| head`)
//! surfaces as a `BrokenPipe` error, which `main` treats as success.
//!
//! Colour and the spinner appear only when stderr is a terminal and
//! `NO_COLOR` is not set; everything reads the same without them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether stderr gets colour and animation.
fn is_fancy() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

fn label(text: &str, style: console::Style) -> String {
    if is_fancy() {
        style.force_styling(true).apply_to(text).to_string()
    } else {
        text.to_string()
    }
}

/// An actionable warning: shown unless `-q`, whatever the log level.
#[allow(clippy::print_stderr)]
pub fn warn(message: &str) {
    if !is_quiet() {
        eprintln!(
            "{} {message}",
            label("warning:", console::Style::new().yellow().bold())
        );
    }
}

/// A status line for people, on stderr.
#[allow(clippy::print_stderr)]
pub fn status(message: &str) {
    if !is_quiet() {
        eprintln!("{message}");
    }
}

/// An error, always shown, with its hint.
#[allow(clippy::print_stderr)]
pub fn error(message: &str, hint: Option<&str>) {
    eprintln!(
        "{} {message}",
        label("error:", console::Style::new().red().bold())
    );
    if let Some(hint) = hint {
        eprintln!(
            "{} {hint}",
            label("hint:", console::Style::new().cyan().bold())
        );
    }
}

/// A spinner with the elapsed time, on a terminal only; cleared on drop.
pub struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    pub fn start(message: &str) -> Spinner {
        if is_quiet() || !is_fancy() {
            return Spinner(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Spinner(Some(bar))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Writes `text` and a newline to stdout.
pub fn data(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes bytes to stdout as they are.
pub fn raw(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Writes `value` as pretty JSON to stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(data(&text)?)
}

/// Formats rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let out = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "yy".into()],
            ],
        );
        assert_eq!(out, "A     BB\nlong  x\ns     yy");
    }
}
