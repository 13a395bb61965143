"""The saved attention view works in a real browser with no network: hovering a text token paints
the image patches exactly as the cached attention pattern says.

Runs Debian's headless ``chromium`` (``/usr/bin/chromium``); skipped when it is absent, except
under CI (env var ``CI`` set), where a missing browser fails the test (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmlens import HookedVLM
from mmlens.data.shapes import make_sample
from mmlens.inputs import sample_inputs
from mmlens.viz.attention_view import attention_view

PAINT = np.array([255.0, 40.0, 0.0])  # view.js: positive values are this colour at opacity 0.85 * v / max
WINDOW = "1100,720"
BROWSER_SERVICES = r"https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gvt1\.com)/"


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing under CI: .ci/run installs Debian's chromium (apt-get install chromium).")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _browse(tmp_path: Path, page: Path, fragment: str, mode: str) -> Path | str:
    """Open ``page#fragment`` offline; ``mode`` "dom" returns the DOM after scripts, "shot" a PNG path."""
    out = tmp_path / f"shot{len(list(tmp_path.glob('shot*')))}.png"
    netlog = tmp_path / f"net{len(list(tmp_path.glob('net*')))}.json"
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--force-device-scale-factor=1", f"--window-size={WINDOW}", f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--log-net-log={netlog}", "--virtual-time-budget=3000",
        "--dump-dom" if mode == "dom" else f"--screenshot={out}",
        f"{page.as_uri()}#{fragment}",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-2000:]
    # The browser's own service calls (time, updates, accounts) fail offline; the page makes none.
    urls = {u for u in re.findall(r'"url":"([^"]+)"', netlog.read_text()) if not u.startswith(("file:", "data:"))}
    assert not [u for u in urls if not re.match(BROWSER_SERVICES, u)], f"the page asked the network for {urls}"
    return run.stdout if mode == "dom" else out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The shapes model, one sample's inputs, its saved view and the attention pattern per layer."""
    model = HookedVLM.from_pretrained("shapes-llava")
    sample = make_sample(0, "ChooseAttr")
    inputs = sample_inputs(model, sample, "vicuna_v1")
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", l][0] for l in range(model.cfg.n_layers)])  # [layer, head, q, k]
    page = attention_view(model, inputs, image=sample.load_image()).save(tmp_path_factory.mktemp("view") / "v.html")
    return model, inputs, patterns, page


def _spread_head(inputs, patterns, q: int) -> tuple[int, int]:
    """(layer, head) where query ``q`` spreads over the most image patches (those with at least 0.3
    of its largest attention) while one patch still clearly leads (by 0.1 of the largest)."""
    image = inputs.groups.positions("image")
    row = patterns[:, :, q]  # [layer, head, key]
    top = row.max(-1, keepdim=True).values
    top2 = row[..., image].topk(2, dim=-1).values
    ok = (top2[..., 0] >= 0.999 * top[..., 0]) & (top2[..., 0] - top2[..., 1] > 0.1 * top[..., 0])
    spread = torch.where(ok, (row[..., image] >= 0.3 * top).sum(-1), -1)
    layer, head = divmod(int(spread.argmax()), patterns.shape[1])
    assert spread[layer, head] >= 3  # the sample has such a head, so the check below is not trivial
    return layer, head


def test_hovering_a_token_paints_its_attention_on_the_patches(case, tmp_path):
    model, inputs, patterns, page = case
    q = inputs.groups.positions("question")[2].item()  # "Is the triangle ...": the named object
    assert model.processor.tokenizer.convert_ids_to_tokens([inputs.input_ids[0, q].item()]) == ["triangle"]
    layer, head = _spread_head(inputs, patterns, q)
    frag = f"layer={layer}&head={head}"
    dom = _browse(tmp_path, page, f"hover={q}&{frag}&rects=1", "dom")
    rects = json.loads(re.search(r'<pre class="rects" id="rects">(.*?)</pre>', dom, re.S).group(1))
    before = np.asarray(Image.open(_browse(tmp_path, page, f"{frag}&dim=1", "shot")).convert("RGB"), dtype=float)
    after = np.asarray(Image.open(_browse(tmp_path, page, f"hover={q}&{frag}", "shot")).convert("RGB"), dtype=float)

    image = inputs.groups.positions("image").tolist()
    assert sorted(int(p) for p in rects) == image  # every patch is drawn, on screen
    painted = {}
    for p in image:  # the opacity of the paint over each patch, from U + a (C - U) = H per pixel
        x, y, w, h = (round(v) for v in rects[str(p)])
        assert w > 10 and h > 10 and x >= 0 and y >= 0
        u, hv = before[y + 3 : y + h - 3, x + 3 : x + w - 3], after[y + 3 : y + h - 3, x + 3 : x + w - 3]
        painted[p] = float(((hv - u) * (PAINT - u)).sum() / ((PAINT - u) ** 2).sum())
    row = patterns[layer, head, q]
    expected = {p: 0.85 * float(row[p] / row.max()) for p in image}
    top = max(expected, key=expected.get)
    assert max(painted, key=painted.get) == top
    assert painted[top] > 0.8 and sum(a > 0.25 for a in painted.values()) >= 3
    np.testing.assert_allclose([painted[p] for p in image], [expected[p] for p in image], atol=0.03)


def test_hovering_a_patch_paints_the_text_tokens_that_read_it(case, tmp_path):
    """Head mean: the patch and layer where the most text tokens read the patch (>= 0.1 of the top)."""
    _, inputs, patterns, page = case
    image = inputs.groups.positions("image")
    text = (inputs.groups["image"][0] == 0).nonzero().flatten()
    columns = patterns.mean(1)[:, text][:, :, image]  # [layer, text query, image key]
    readers = (columns >= 0.1 * columns.amax(1, keepdim=True)).sum(1)  # [layer, image key]
    layer, k = divmod(int(readers.argmax()), len(image))
    assert readers[layer, k] >= 3
    dom = _browse(tmp_path, page, f"patch={image[k].item()}&layer={layer}&head=mean", "dom")
    shown = {int(p): float(a) for p, a in re.findall(r'data-pos="(\d+)"[^>]*?rgba\(255, 40, 0, ([\d.]+)\)', dom)}
    expected = 0.85 * columns[layer, :, k] / columns[layer, :, k].max()
    np.testing.assert_allclose([shown.get(int(t), 0.0) for t in text], expected.numpy(), atol=0.01)


def test_the_page_works_offline_and_shows_special_tokens(case, tmp_path):
    page = case[-1]
    html = page.read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    dom = _browse(tmp_path, page, "", "dom")
    assert '<span class="tok special"' in dom and "&lt;s&gt;</span>" in dom  # BOS in a box
    assert "image ×64" in dom
