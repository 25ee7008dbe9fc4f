"""Coverage from regorus's report: policy files only, per file and total, uncovered lines as ranges."""

from __future__ import annotations

import json

from mcp_guard.policy.coverage import coverage_from_regorus, format_coverage


def test_report_keeps_policies_and_counts_unreported_files_as_empty() -> None:
    raw = json.dumps(
        {
            "files": [
                {"path": "/b/p.rego", "covered": [3, 4], "not_covered": [7, 8, 9, 12]},
                {"path": "/b/p_test.rego", "covered": [5], "not_covered": []},
            ]
        }
    )
    report = coverage_from_regorus(raw, {"/b/p.rego": "p.rego", "/b/q.rego": "q.rego"})
    assert [f.file for f in report.files] == ["p.rego", "q.rego"]
    assert report.files[0].percent == 100 * 2 / 6 and report.files[1].percent == 100.0
    assert round(report.percent, 2) == 33.33
    text = format_coverage(report)
    assert "not covered: 7-9, 12" in text and text.splitlines()[-1].split() == ["total", "33.33%"]
    assert report.to_dict()["files"][0]["not_covered"] == [7, 8, 9, 12]
