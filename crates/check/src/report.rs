//! The findings of a check, their score and grade, and how they are printed.

use std::fmt::Write as _;

use serde::Serialize;

/// The version of the JSON output (docs/CHECK-JSON.md); raised when a field changes meaning
/// or goes away, not when one is added.
pub const SCHEMA_VERSION: u32 = 1;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    /// For information; no effect on the score.
    Info,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Info => "INFO",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// The six pillars of secure email, in the order the report shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pillar {
    Encryption,
    Authentication,
    Integrity,
    Confidentiality,
    ServerSecurity,
    ProtocolSupport,
}

impl Pillar {
    pub const ALL: [Pillar; 6] = [
        Pillar::Encryption,
        Pillar::Authentication,
        Pillar::Integrity,
        Pillar::Confidentiality,
        Pillar::ServerSecurity,
        Pillar::ProtocolSupport,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Pillar::Encryption => "Encryption in transit",
            Pillar::Authentication => "Authentication",
            Pillar::Integrity => "Integrity",
            Pillar::Confidentiality => "Confidentiality",
            Pillar::ServerSecurity => "Server security",
            Pillar::ProtocolSupport => "Protocol support",
        }
    }
}

/// One finding. `id` names the check (scripts match on it: docs/CHECK-JSON.md lists them);
/// `fix` says what to change for a WARN or a FAIL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub id: String,
    pub pillar: Pillar,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
    /// The check could not be made (a lookup failed): the report cannot be an A.
    #[serde(skip)]
    pub incomplete: bool,
}

impl Check {
    pub fn new(id: &str, pillar: Pillar, status: Status, detail: impl Into<String>) -> Check {
        Check {
            id: id.to_string(),
            pillar,
            status,
            detail: detail.into(),
            fix: None,
            incomplete: false,
        }
    }

    /// Marks a check that could not be made.
    pub fn incomplete(mut self) -> Check {
        self.incomplete = true;
        self
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// A letter grade, A best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Grade {
    A,
    B,
    C,
    D,
    F,
}

impl Grade {
    /// The grade of `score` (0-100); any FAIL, or any check that could not be made
    /// (`blockers`), keeps a report below A.
    pub fn of(score: u32, blockers: usize) -> Grade {
        match score {
            90.. if blockers == 0 => Grade::A,
            75.. => Grade::B,
            60.. => Grade::C,
            40.. => Grade::D,
            _ => Grade::F,
        }
    }

    pub fn parse(text: &str) -> Option<Grade> {
        match text.trim().to_ascii_uppercase().as_str() {
            "A" => Some(Grade::A),
            "B" => Some(Grade::B),
            "C" => Some(Grade::C),
            "D" => Some(Grade::D),
            "F" => Some(Grade::F),
            _ => None,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
            Grade::F => "F",
        }
    }
}

/// Points a finding takes off the 100 a report starts with.
pub const FAIL_POINTS: u32 = 15;
pub const WARN_POINTS: u32 = 4;

/// Everything one run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub domain: String,
    /// Unix time the check ran.
    pub checked_at: i64,
    pub score: u32,
    pub grade: Grade,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(domain: &str, checked_at: i64, checks: Vec<Check>) -> Report {
        let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
        let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
        let lost = FAIL_POINTS.saturating_mul(fails as u32) + WARN_POINTS.saturating_mul(warns as u32);
        let score = 100u32.saturating_sub(lost);
        Report {
            schema_version: SCHEMA_VERSION,
            domain: domain.to_string(),
            checked_at,
            score,
            grade: Grade::of(score, fails + checks.iter().filter(|c| c.incomplete).count()),
            checks,
        }
    }

    /// The JSON of docs/CHECK-JSON.md.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// The text report: grouped by pillar, each WARN and FAIL with its fix; with ANSI colours
    /// when `colour` (a terminal).
    pub fn text(&self, colour: bool) -> String {
        let paint = |status: Status| {
            let label = status.label();
            if !colour {
                return label.to_string();
            }
            let code = match status {
                Status::Pass => "32",
                Status::Info => "36",
                Status::Warn => "33",
                Status::Fail => "31",
            };
            format!("\x1b[{code}m{label}\x1b[0m")
        };
        let mut out = format!("Mail security of {}\n", self.domain);
        for pillar in Pillar::ALL {
            let checks: Vec<&Check> = self.checks.iter().filter(|c| c.pillar == pillar).collect();
            if checks.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{}", pillar.title());
            for check in checks {
                let _ = writeln!(
                    out,
                    "  {} {}: {}",
                    paint(check.status),
                    printable(&check.id),
                    printable(&check.detail)
                );
                if let Some(fix) = &check.fix
                    && matches!(check.status, Status::Warn | Status::Fail)
                {
                    for line in fix.lines() {
                        let _ = writeln!(out, "       fix: {}", printable(line));
                    }
                }
            }
        }
        let count = |status: Status| self.checks.iter().filter(|c| c.status == status).count();
        let _ = writeln!(
            out,
            "\nScore {}/100, grade {} ({} pass, {} warn, {} fail, {} info)",
            self.score,
            self.grade.letter(),
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Info)
        );
        out
    }
}

/// Text from the checked domain (DNS records, greetings) made safe for a terminal: control
/// and bidirectional-override characters shown as `\u{..}`, so a record cannot move the
/// cursor, recolour the report or fake lines of it.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: Status) -> Check {
        Check::new("x", Pillar::Authentication, status, "d").with_fix("do this")
    }

    #[test]
    fn score_and_grade_follow_the_findings() {
        let report = Report::new("example.org", 0, vec![check(Status::Pass), check(Status::Info)]);
        assert_eq!((report.score, report.grade), (100, Grade::A));
        let report = Report::new("example.org", 0, vec![check(Status::Warn), check(Status::Warn)]);
        assert_eq!((report.score, report.grade), (92, Grade::A));
        // A check that could not be made is no A either.
        let report = Report::new("example.org", 0, vec![check(Status::Warn).incomplete()]);
        assert_eq!((report.score, report.grade), (96, Grade::B));
        // One FAIL is never an A, whatever the score.
        let report = Report::new("example.org", 0, vec![check(Status::Fail)]);
        assert_eq!((report.score, report.grade), (85, Grade::B));
        let report = Report::new("example.org", 0, vec![check(Status::Fail); 10]);
        assert_eq!((report.score, report.grade), (0, Grade::F));
        assert!(Grade::B > Grade::A && Grade::parse("c") == Some(Grade::C) && Grade::parse("E").is_none());
    }

    #[test]
    fn the_json_has_the_documented_names() -> Result<(), serde_json::Error> {
        let report = Report::new("example.org", 7, vec![check(Status::Fail)]);
        let value: serde_json::Value = serde_json::from_str(&report.json())?;
        assert_eq!(value["schema_version"], 1);
        assert_eq!(value["grade"], "B");
        assert_eq!(value["checks"][0]["pillar"], "authentication");
        assert_eq!(value["checks"][0]["status"], "FAIL");
        assert_eq!(value["checks"][0]["fix"], "do this");
        for key in ["id", "detail"] {
            assert!(value["checks"][0].get(key).is_some(), "{key}");
        }
        Ok(())
    }

    #[test]
    fn the_text_groups_by_pillar_and_shows_fixes_only_for_findings() {
        let report = Report::new(
            "example.org",
            0,
            vec![
                Check::new("spf", Pillar::Authentication, Status::Fail, "none").with_fix("publish it"),
                Check::new("mx", Pillar::ProtocolSupport, Status::Pass, "ok").with_fix("never shown"),
            ],
        );
        let text = report.text(false);
        assert!(
            text.contains("Authentication\n  FAIL spf: none\n       fix: publish it"),
            "{text}"
        );
        assert!(!text.contains("never shown") && !text.contains('\x1b'));
        assert!(report.text(true).contains("\x1b[31mFAIL"));
        // What a hostile record holds cannot drive the terminal or fake report lines.
        let hostile = Report::new(
            "example.org",
            0,
            vec![Check::new(
                "dmarc",
                Pillar::Authentication,
                Status::Pass,
                "x\x1b]0;pwn\x07\r\n  PASS spf: ok\u{202e}",
            )],
        );
        let text = hostile.text(false);
        assert!(
            !text.contains('\x1b') && !text.contains('\r') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(
            text.contains("x\\u{1b}]0;pwn\\u{7}\\u{d}\\u{a}  PASS spf: ok\\u{202e}"),
            "{text}"
        );
    }
}
