"""M-RoPE and the packed-image helpers against independent computations."""

from __future__ import annotations

import pytest
import torch
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from mmlens.components.mrope import MRotary, mrope_positions
from mmlens.components.packed_vision import patch_coordinates, window_ids
from mmlens.components.rotary import Rotary
from mmlens.errors import ImageTokenMismatchError

INV_FREQ = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))


def test_equal_position_rows_are_ordinary_rotary():
    positions = torch.tensor([[0, 1, 2, 7], [3, 3, 4, 9]])
    mrope = MRotary(INV_FREQ, (2, 3, 3))
    reference = Rotary(INV_FREQ)(positions, torch.float32)
    for given in (positions, positions.expand(3, -1, -1)):  # [batch, pos] and three equal rows
        for ours, ref in zip(mrope(given, torch.float32), reference):
            torch.testing.assert_close(ours, ref, atol=0, rtol=0)


def test_each_section_rotates_by_its_own_position():
    t, h, w = torch.tensor([[5]]), torch.tensor([[11]]), torch.tensor([[2]])
    cos, _ = MRotary(INV_FREQ, (2, 3, 3))(torch.stack([t, h, w]), torch.float32)
    expected = torch.cat([5 * INV_FREQ[:2], 11 * INV_FREQ[2:5], 2 * INV_FREQ[5:]]).cos()
    torch.testing.assert_close(cos[0, 0], torch.cat([expected, expected]), atol=1e-6, rtol=0)


def test_positions_of_an_image_and_the_text_after_it():
    """2 text tokens, a 1x4x6 patch grid (2x3 tokens after 2x2 merging), 2 text tokens; left padding."""
    ids = torch.tensor([[0, 9, 9] + [6] * 6 + [9, 9]])
    mask = torch.tensor([[0] + [1] * 10])
    pos = mrope_positions(ids, mask, torch.tensor([[1, 4, 6]]), image_token_id=6, merge_size=2)
    assert pos[:, 0, 0].tolist() == [0, 0, 0]
    assert pos[:, 0, 1:3].tolist() == [[0, 1]] * 3
    assert pos[0, 0, 3:9].tolist() == [2] * 6
    assert pos[1, 0, 3:9].tolist() == [2, 2, 2, 3, 3, 3] and pos[2, 0, 3:9].tolist() == [2, 3, 4, 2, 3, 4]
    assert pos[:, 0, 9:].tolist() == [[5, 6]] * 3  # 2 + max(2, 3)


def test_image_token_runs_must_match_the_grids():
    ids = torch.tensor([[9] + [6] * 5 + [9]])
    with pytest.raises(ImageTokenMismatchError, match="1x4x6"):
        mrope_positions(ids, None, torch.tensor([[1, 4, 6]]), image_token_id=6, merge_size=2)
    with pytest.raises(ImageTokenMismatchError, match="image_grid_thw has 2 images"):
        mrope_positions(torch.tensor([[9] + [6] * 6 + [9]]), None, torch.tensor([[1, 4, 6], [1, 2, 2]]), 6, 2)


def test_patch_coordinates_follow_hugging_face_order():
    grid = torch.tensor([[1, 4, 6], [1, 8, 4]])
    coords = patch_coordinates(grid, 2)
    assert torch.equal(coords[:, 2:], get_vision_position_ids(grid, 2))
    assert coords[:, 0].tolist() == [0] * 24 + [1] * 32


def test_windows_are_hugging_face_windows():
    """Patches share a window exactly when Hugging Face's window index puts them in one window."""
    grid = torch.tensor([[1, 6, 10], [1, 8, 4]])
    coords = patch_coordinates(grid, 2)
    ours = window_ids(coords, grid, merge_size=2, window=2)
    index, cu = get_vision_window_index(grid, spatial_merge_size=2, window_size=16, patch_size=4)
    order = (index[:, None] * 4 + torch.arange(4)).flatten()  # HF row k holds patch order[k]
    theirs = torch.empty_like(ours)
    theirs[order] = torch.repeat_interleave(torch.arange(len(cu) - 1), (cu[1:] - cu[:-1]).long())
    assert torch.equal(ours[:, None] == ours[None, :], theirs[:, None] == theirs[None, :])
    # 3x5 image tokens in windows of 2x2 tokens: 2x3 windows; 4x2 tokens: 2x1 windows.
    assert len(set(ours.tolist())) == 2 * 3 + 2 * 1
