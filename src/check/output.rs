//! How `check` reports: human text, a JSON report for tools, JSON Patches, or the patched
//! documents as YAML.

use std::io::Write;

use serde_json::{Value, json};

use super::{Finding, InputError, Options, Status, Summary};
use crate::admission::fit_warnings;
use crate::policy::{ChangeKind, invalid_message};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One block per DaemonSet, for people (colour on a terminal).
    Text,
    /// One JSON report (kind CheckReport) for tools; the schema is in the README.
    Json,
    /// One JSON line per DaemonSet the webhook would patch, with its RFC 6902 patch.
    Patch,
    /// Every document, DaemonSets patched as the webhook would, as a YAML stream.
    Yaml,
}

/// The `apiVersion` and `kind` of the JSON report; a change to its shape changes the version.
pub const REPORT_API_VERSION: &str = "daemonset-webhook.io/v1";
pub const REPORT_KIND: &str = "CheckReport";

const RESET: &str = "\x1b[0m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";

pub(super) struct Reporter<'a> {
    options: Options<'a>,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    summary: Summary,
    files: usize,
    /// JSON results written so far (they are streamed, not held).
    results: usize,
    errors: Vec<Value>,
    /// A `# Source:` comment owed before the next YAML document.
    source: Option<String>,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(
        options: Options<'a>,
        out: &'a mut dyn Write,
        err: &'a mut dyn Write,
    ) -> Self {
        if options.format == Format::Json {
            // The report is streamed: its head now, each result as it is found, its tail last.
            let _ = write!(
                out,
                "{{\n  \"apiVersion\": {},\n  \"kind\": {},\n  \"results\": [",
                Value::from(REPORT_API_VERSION),
                Value::from(REPORT_KIND)
            );
        }
        Self {
            options,
            out,
            err,
            summary: Summary::default(),
            files: 0,
            results: 0,
            errors: Vec::new(),
            source: None,
        }
    }

    fn paint(&self, color: &str, text: &str) -> String {
        if self.options.color {
            format!("{color}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    pub(super) fn start_file(&mut self, file: &str, several: bool) {
        self.files += 1;
        self.source = several.then(|| file.to_owned());
    }

    pub(super) fn skipped(&mut self) {
        self.summary.skipped += 1;
    }

    pub(super) fn error(&mut self, error: &InputError) {
        self.summary.errors += 1;
        let mut location = error.file.clone();
        if let Some(line) = error.line {
            location.push_str(&format!(":{line}"));
            if let Some(column) = error.column {
                location.push_str(&format!(":{column}"));
            }
        }
        match self.options.format {
            Format::Json => self.errors.push(json!({
                "file": error.file,
                "line": error.line,
                "column": error.column,
                "message": error.message,
            })),
            Format::Text => {
                let tag = self.paint(&format!("{BOLD}{RED}"), "error      ");
                let _ = writeln!(self.out, "{tag} {location}: {}", error.message);
            }
            Format::Patch | Format::Yaml => {
                let _ = writeln!(self.err, "error: {location}: {}", error.message);
            }
        }
    }

    /// Reports a document's DaemonSets; `document` is the document with their patches applied.
    pub(super) fn document(&mut self, findings: &[Finding], document: &Value) {
        for finding in findings {
            self.summary.count(finding.status());
            match self.options.format {
                Format::Text => self.text(finding),
                Format::Json => {
                    let separator = if self.results == 0 { "" } else { "," };
                    self.results += 1;
                    let pretty = serde_json::to_string_pretty(&finding_json(finding))
                        .unwrap_or_default()
                        .replace('\n', "\n    ");
                    let _ = write!(self.out, "{separator}\n    {pretty}");
                }
                Format::Patch => {
                    if finding.status() == Status::Incomplete {
                        let line = json!({
                            "file": finding.file,
                            "document": finding.document,
                            "line": finding.line,
                            "item": finding.item,
                            "namespace": finding.namespace,
                            "name": finding.name,
                            "patch": finding.verdict.as_ref().map(|v| v.patch().to_value()),
                        });
                        let _ = writeln!(self.out, "{line}");
                    }
                    self.problems_to_stderr(finding);
                }
                Format::Yaml => self.problems_to_stderr(finding),
            }
        }
        if self.options.format == Format::Yaml {
            match serde_saphyr::to_string(document) {
                Ok(yaml) => {
                    let _ = writeln!(self.out, "---");
                    if let Some(file) = self.source.take() {
                        let _ = writeln!(self.out, "# Source: {file}");
                    }
                    let _ = write!(self.out, "{yaml}");
                }
                Err(error) => {
                    self.summary.errors += 1;
                    let _ = writeln!(self.err, "error: writing YAML: {error}");
                }
            }
        }
    }

    /// For the data formats: say on stderr why a DaemonSet was not patched.
    fn problems_to_stderr(&mut self, finding: &Finding) {
        match finding.status() {
            Status::Invalid => {
                let verdict = finding.verdict.as_ref().expect("invalid means judged");
                let _ = writeln!(
                    self.err,
                    "invalid: {}: {}",
                    finding.location(),
                    invalid_message(
                        &finding.name,
                        verdict.errors(),
                        verdict.violations.omitted()
                    )
                );
            }
            Status::Unsupported => {
                let _ = writeln!(
                    self.err,
                    "unsupported: {}: {}",
                    finding.location(),
                    unsupported_message(finding)
                );
            }
            Status::Complete | Status::Incomplete | Status::Exempt => {}
        }
    }

    fn text(&mut self, finding: &Finding) {
        let status = finding.status();
        let (color, tag) = match status {
            Status::Complete => (GREEN, "complete   "),
            Status::Incomplete => (YELLOW, "incomplete "),
            Status::Invalid => (RED, "invalid    "),
            Status::Unsupported => (RED, "unsupported"),
            Status::Exempt => (GREEN, "exempt     "),
        };
        let tag = self.paint(color, tag);
        let mut block = format!(
            "{tag} {} DaemonSet {} ({})\n",
            finding.location(),
            finding.object(),
            finding.api_version
        );
        if let Some(note) = finding.note {
            block.push_str(&format!("    note: {note}\n"));
        }
        // An exempt finding's warning lines carry these already.
        if let Some(verdict) = finding
            .verdict
            .as_ref()
            .filter(|_| status != Status::Exempt)
        {
            for path in &verdict.repeated_keys {
                let line = crate::policy::WarningLine::RepeatedKey(path);
                block.push_str(&format!("    warning: {line}\n"));
            }
        }
        match (&finding.verdict, status) {
            (None, _) => block.push_str(&format!("    {}\n", unsupported_message(finding))),
            (Some(verdict), Status::Exempt) => {
                for warning in fit_warnings(verdict.warning_lines(false)) {
                    block.push_str(&format!("    {warning}\n"));
                }
            }
            (Some(verdict), Status::Invalid) => {
                for violation in &verdict.violations {
                    block.push_str(&format!("    - {violation}\n"));
                }
                if verdict.violations.omitted() > 0 {
                    block.push_str(&format!(
                        "    - and {} more errors\n",
                        verdict.violations.omitted()
                    ));
                }
            }
            (Some(verdict), _) => {
                // The standard tolerations in one line; each of the rest on its own.
                let added: Vec<String> = verdict
                    .changes()
                    .filter(|c| c.kind() == ChangeKind::TolerationAdded)
                    .map(|c| c.subject().to_string())
                    .collect();
                if !added.is_empty() {
                    block.push_str(&format!(
                        "    + add the tolerations the DaemonSet controller gives every daemon pod: {}\n",
                        added.join(", ")
                    ));
                }
                for change in verdict
                    .changes()
                    .filter(|c| c.kind() != ChangeKind::TolerationAdded)
                {
                    block.push_str(&format!("    + {}\n", change.message()));
                }
            }
        }
        // What rules in warn mode found.
        if let Some(verdict) = finding
            .verdict
            .as_ref()
            .filter(|_| status != Status::Exempt)
        {
            for violation in &verdict.warned_violations {
                block.push_str(&format!(
                    "    ! would be denied (policy mode warn): {violation}\n"
                ));
            }
            for change in verdict.warned_changes() {
                block.push_str(&format!(
                    "    ! not applied (policy mode warn): {}\n",
                    change.message()
                ));
            }
        }
        let _ = write!(self.out, "{block}");
    }

    pub(super) fn finish(self) -> Summary {
        let summary = self.summary;
        match self.options.format {
            Format::Json => {
                let tail = json!({
                    "errors": self.errors,
                    "summary": {
                        "files": self.files,
                        "daemonSets": summary.daemon_sets,
                        "complete": summary.complete,
                        "incomplete": summary.incomplete,
                        "invalid": summary.invalid,
                        "unsupported": summary.unsupported,
                        "exempt": summary.exempt,
                        "skipped": summary.skipped,
                        "errors": summary.errors,
                        "exitCode": summary.exit_code(self.options.require_mutated),
                    },
                });
                let tail = serde_json::to_string_pretty(&tail)
                    .unwrap_or_default()
                    .replace('\n', "\n  ");
                // `tail` is an object; splice its members after the results.
                let members = tail
                    .strip_prefix('{')
                    .and_then(|t| t.strip_suffix('}'))
                    .unwrap_or_default()
                    .trim_end();
                let close = if self.results == 0 { "]" } else { "\n  ]" };
                let _ = writeln!(self.out, "{close},{members}\n}}");
            }
            Format::Text => {
                let line = summary_line(&summary, self.files);
                let _ = writeln!(self.out, "{line}");
                if self.options.require_mutated && summary.incomplete > 0 {
                    let _ = writeln!(
                        self.out,
                        "--require-mutated: {} DaemonSet(s) lack what the webhook would add; \
                         write it in (`check --output yaml`) or apply the patch",
                        summary.incomplete
                    );
                }
            }
            Format::Patch | Format::Yaml => {
                let _ = writeln!(self.err, "{}", summary_line(&summary, self.files));
            }
        }
        let _ = self.out.flush();
        summary
    }
}

fn summary_line(summary: &Summary, files: usize) -> String {
    let mut line = format!(
        "checked {} DaemonSet(s) in {files} input(s): {} complete, {} would be patched, {} invalid",
        summary.daemon_sets, summary.complete, summary.incomplete, summary.invalid
    );
    if summary.unsupported > 0 {
        line.push_str(&format!(", {} unsupported", summary.unsupported));
    }
    if summary.exempt > 0 {
        line.push_str(&format!(", {} exempt", summary.exempt));
    }
    line.push_str(&format!(
        "; {} other object(s) passed over",
        summary.skipped
    ));
    if summary.errors > 0 {
        line.push_str(&format!("; {} input error(s)", summary.errors));
    }
    line
}

fn unsupported_message(finding: &Finding) -> String {
    format!(
        "apiVersion {:?} never served DaemonSets; use apps/v1 (extensions/v1beta1 and apps/v1beta2 are judged as apps/v1)",
        finding.api_version
    )
}

/// One entry of the JSON report's `results`.
fn finding_json(finding: &Finding) -> Value {
    let status = finding.status();
    let verdict = finding.verdict.as_ref();
    json!({
        "file": finding.file,
        "document": finding.document,
        "line": finding.line,
        "item": finding.item,
        "apiVersion": finding.api_version,
        "kind": "DaemonSet",
        "namespace": finding.namespace,
        "name": finding.name,
        "status": status.as_str(),
        "note": finding.note,
        "message": match status {
            Status::Invalid => verdict.map(|v| invalid_message(&finding.name, v.errors(), v.violations.omitted())),
            Status::Unsupported => Some(unsupported_message(finding)),
            Status::Complete | Status::Incomplete | Status::Exempt => None,
        },
        "warnings": verdict.map(|v| fit_warnings(v.warning_lines(true))).unwrap_or_default(),
        "violations": verdict.map(|v| v.violations.iter().map(|violation| json!({
            "field": violation.error.field,
            "type": violation.error.cause_type(),
            "message": violation.error.body(),
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "changes": verdict.map(|v| v.changes().map(|change| json!({
            "kind": change.kind().as_str(),
            "subject": change.subject().to_string(),
            "message": change.message().to_string(),
        })).collect::<Vec<_>>()).unwrap_or_default(),
        "patch": verdict.map_or_else(|| json!([]), |v| v.patch().to_value()),
    })
}
