"""The audit report: every section present with real plots, and a real headless Chromium render."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

SECTIONS = ["model-card", "shap", "permutation", "pdp-ice", "ebm", "reason-codes", "scores", "stability",
            "faithfulness", "flagged", "reproducibility"]


def _images(html: str) -> list[np.ndarray]:
    import matplotlib.image

    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _render(chromium: str, page: Path, profile: Path, screenshot: Path) -> str:
    """Render ``page`` headless into ``screenshot``; returns Chromium's log (console messages included)."""
    from risklens.reports._report import headless_flags

    done = subprocess.run(
        [chromium, *headless_flags(profile), "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
         "--window-size=1200,7000", f"--screenshot={screenshot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_report_has_every_section_filled_from_the_run(fraud_run):
    html = (fraud_run[0] / "report.html").read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in html
    # With the explanation suite registered, no section falls back to "not available".
    assert "Not available for this run" not in html
    assert "ROC AUC" in html and "PR AUC" in html
    assert re.search(r"Audit chain head</dt><dd>sequence 15420, hash [0-9a-f]{64}", html)
    images = _images(html)
    assert len(images) >= 9
    for image in images:  # every plot has content: not one flat colour
        assert image[..., :3].std() > 0.02
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:|//)', html)


def test_report_renders_in_headless_chromium_without_console_errors(fraud_run, chromium, tmp_path):
    import matplotlib.image

    # The console check itself works: a page with a script error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('boom'); undefined_function();</script></body></html>")
    assert _console_errors(_render(chromium, broken, tmp_path / "profile-a", tmp_path / "broken.png"))

    screenshot = fraud_run[0] / "report.png"
    log = _render(chromium, fraud_run[0] / "report.html", tmp_path / "profile-b", screenshot)
    assert _console_errors(log) == []
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (7000, 1200)
    non_white = (pixels < 0.95).any(axis=2)
    assert non_white.mean() > 0.05  # text, frames and plots, not a blank page
    # The plot colours are on screen: SHAP bars (blue) and referred claims (red).
    blue = np.abs(pixels - np.array([0x2E, 0x86, 0xC1]) / 255).max(axis=2) < 0.04
    red = np.abs(pixels - np.array([0xC0, 0x39, 0x2B]) / 255).max(axis=2) < 0.04
    assert blue.sum() > 5000 and red.sum() > 500


def test_report_says_plainly_what_a_shap_only_run_lacks(fraud_models_dir, tmp_path):
    import pandas as pd

    from risklens.reports import AuditRunConfig, run_audit

    data = tmp_path / "claims.csv"
    pd.read_csv(_fraud_csv()).iloc[:600].to_csv(data, index=False)
    result = run_audit(AuditRunConfig(model="fraud-oracle", data=data, out=tmp_path / "run",
                                      models_dir=fraud_models_dir, methods=(), record_audit=False, progress=False))
    html = result.report_path.read_text()
    for key in ("pdp-ice", "ebm", "stability"):
        section = html.split(f'<section id="{key}">')[1].split("</section>")[0]
        assert "Not available for this run" in section
    # Permutation importance is the model's, measured at registration: shown whatever the run explained.
    assert "Not available for this run" not in html.split('<section id="permutation">')[1].split("</section>")[0]
    assert "Metrics</dt><dd>not computed: the run had no label column" in html
    assert "audit not recorded" in html


def _fraud_csv() -> Path:
    from risklens.datasets.shared import shared_data_dir

    return shared_data_dir() / "fraud_oracle.csv"


def test_permutation_bars_are_the_global_ranking_with_t_intervals(fraud_models_dir):
    """The chart is the model's global ranking (not one claim's top features), and its whiskers are 95%
    confidence intervals of the mean over the repeats, from the repeats' (ddof=0) std."""
    from scipy import stats

    from risklens.explainers.permutation import PermutationExplainer
    from risklens.registry import ModelRegistry
    from risklens.reports._report import TOP_FEATURES, permutation_bars

    explainer = PermutationExplainer(ModelRegistry.from_directory(fraud_models_dir).get("fraud-oracle"))
    ranks, half_widths = permutation_bars(explainer)
    stored = sorted(explainer.ranks.values(), key=lambda r: -r.importance_mean)
    assert [r.feature for r in ranks] == [r.feature for r in stored[:TOP_FEATURES]]
    n = explainer.n_repeats
    for rank, half in zip(ranks, half_widths):
        sample_std = rank.importance_std * np.sqrt(n / (n - 1))
        low, high = stats.t.interval(0.95, n - 1, loc=rank.importance_mean, scale=sample_std / np.sqrt(n))
        assert half == pytest.approx((high - low) / 2, rel=1e-12)


def test_every_flagged_claim_is_listed_beside_the_report(fraud_run):
    import pandas as pd

    out = fraud_run[0]
    html = (out / "report.html").read_text()
    flagged = pd.read_csv(out / "flagged.csv")
    fact = re.search(r"Flagged</dt><dd>([\d,]+) of ([\d,]+) claims: ([\d,]+) near the threshold only, ([\d,]+) where "
                     r"methods disagree \(of ([\d,]+) checked\)", html)
    assert fact, "the flagged fact is missing"
    total, _, near, disagree, checked = (int(g.replace(",", "")) for g in fact.groups())
    assert len(flagged) == total == near + disagree
    assert flagged["why"].str.startswith("methods disagree").sum() == disagree
    assert checked == pd.read_parquet(out / "claims.parquet")["agreement_disagree"].notna().sum() > 0
    # Most urgent first: every disagreement before every near-threshold-only claim.
    order = flagged["why"].str.startswith("methods disagree").to_numpy()
    assert not (~order[:-1] & order[1:]).any()
