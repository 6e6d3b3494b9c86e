"""fMRI block layout, position ids and the 4-D attention mask, against loop references written from the rules."""

import pytest
import torch

from fmrilm.masking_fmrilm import allowed_attention, find_fmri_layout, fmri_position_ids, to_additive_mask

R, T_PATCHES = 3, 3
N = R * T_PATCHES
FMRI, START, END, PAD_ID = 100, 101, 102, 0
IDS = dict(fmri_token_id=FMRI, fmri_start_token_id=START, fmri_end_token_id=END, n_rois=R, num_fmri_tokens=N)
BLOCK = [START] + [FMRI] * N + [END]


def layout_of(rows: list[list[int]], mask: list[list[int]] | None = None):
    ids = torch.tensor(rows)
    return find_fmri_layout(ids, None if mask is None else torch.tensor(mask), **IDS)


# --------------------------------------------------------------------------------------------------
# Loop references, written directly from the rules of DESIGN 5
# --------------------------------------------------------------------------------------------------


def reference_blocks(row: list[int]) -> tuple[list[int], list[int]]:
    """(block number within the row, placeholder index k) per token; -1 where not a placeholder."""
    block, index = [-1] * len(row), [-1] * len(row)
    current, k = -1, 0
    for i, token in enumerate(row):
        if token == FMRI:
            if i == 0 or row[i - 1] != FMRI:
                current, k = current + 1, 0
            block[i], index[i] = current, k
            k += 1
    return block, index


def reference_positions(row: list[int], real: list[int]) -> list[int]:
    _, index = reference_blocks(row)
    positions, position = [], -1
    for token, k, is_real in zip(row, index, real):
        if not is_real:
            positions.append(0)
            continue
        if token != FMRI or k % R == 0:
            position += 1
        positions.append(position)
    return positions


def reference_allowed(row: list[int], real: list[int], missing: list[bool]) -> list[list[bool]]:
    block, index = reference_blocks(row)
    start_block = [block[i + 1] if token == START else -1 for i, token in enumerate(row[:-1])] + [-1]
    length = len(row)
    allowed = [[False] * length for _ in range(length)]
    for query in range(length):
        for key in range(length):
            if not real[query] or row[query] == START:
                allowed[query][key] = key == query
                continue
            usable_key = bool(real[key]) and not missing[key]
            if row[query] == FMRI:
                if row[key] == START:
                    allowed[query][key] = usable_key and start_block[key] == block[query]
                else:
                    allowed[query][key] = (
                        usable_key and row[key] == FMRI and block[key] == block[query]
                        and index[key] // R <= index[query] // R
                    )  # fmt: skip
            else:
                allowed[query][key] = usable_key and key <= query
    return allowed


def random_batch(seed: int) -> tuple[list[list[int]], list[list[int]], list[list[bool]]]:
    """Rows with 0-2 blocks between random text, padded left or right; trailing time patches of some blocks missing."""
    generator = torch.Generator().manual_seed(seed)

    def draw(high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=generator))

    rows, missing = [], []
    for _ in range(3):
        row, row_missing = [], []
        for _ in range(draw(3)):
            text = [3 + draw(90) for _ in range(draw(3))]
            padded_patches = draw(T_PATCHES)  # 0..T'-1 trailing patches are padding
            row += text + BLOCK
            row_missing += (
                [False] * (len(text) + 1) + [k // R >= T_PATCHES - padded_patches for k in range(N)] + [False]
            )
        tail = [3 + draw(90) for _ in range(1 + draw(3))]
        rows.append(row + tail)
        missing.append(row_missing + [False] * len(tail))
    length = max(map(len, rows))
    left = bool(draw(2))
    masks = []
    for i, row in enumerate(rows):
        pad = length - len(row)
        rows[i] = [PAD_ID] * pad + row if left else row + [PAD_ID] * pad
        missing[i] = [False] * pad + missing[i] if left else missing[i] + [False] * pad
        masks.append([0] * pad + [1] * len(row) if left else [1] * len(row) + [0] * pad)
    return rows, masks, missing


# --------------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------------


def test_positions_of_one_block_follow_the_time_patches():
    layout = layout_of([[7, 8] + BLOCK + [9]])
    expected = [0, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 7]
    assert fmri_position_ids(layout, R).tolist() == [expected]


def test_positions_skip_left_padding_and_two_blocks_each_advance_by_their_time_patches():
    row = [7] + BLOCK + [8] + BLOCK + [9]
    layout = layout_of(
        [[PAD_ID, PAD_ID] + row, row + [PAD_ID, PAD_ID]], [[0, 0] + [1] * len(row), [1] * len(row) + [0, 0]]
    )
    expected = [0, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 6, 7, 8, 8, 8, 9, 9, 9, 10, 10, 10, 11, 12]
    positions = fmri_position_ids(layout, R).tolist()
    assert positions[0] == [0, 0] + expected
    assert positions[1] == expected + [0, 0]


@pytest.mark.parametrize("seed", range(4))
def test_positions_equal_the_loop_reference(seed):
    rows, masks, _ = random_batch(seed)
    positions = fmri_position_ids(layout_of(rows, masks), R).tolist()
    assert positions == [reference_positions(row, real) for row, real in zip(rows, masks)]


# --------------------------------------------------------------------------------------------------
# Layout and mask
# --------------------------------------------------------------------------------------------------


def test_layout_numbers_blocks_in_reading_order_and_indexes_time_major():
    layout = layout_of([[7] + BLOCK + BLOCK, [8] + BLOCK + [9] * 11])
    assert layout.num_blocks == 3
    first_row_blocks = layout.block[0][layout.is_placeholder[0]].tolist()
    assert first_row_blocks == [0] * N + [1] * N
    assert layout.block[1][layout.is_placeholder[1]].tolist() == [2] * N
    assert layout.block[0, 1].item() == 0 and layout.block[0, 1 + len(BLOCK)].item() == 1  # start tokens
    placeholders = layout.index_in_block[1][layout.is_placeholder[1]].tolist()
    assert placeholders == list(range(N))
    assert layout.time_patch[1][layout.is_placeholder[1]].tolist() == [k // R for k in range(N)]


@pytest.mark.parametrize("seed", range(6))
def test_allowed_attention_equals_the_loop_reference(seed):
    rows, masks, missing = random_batch(seed)
    allowed = allowed_attention(layout_of(rows, masks), torch.tensor(missing)).tolist()
    for b, (row, real, row_missing) in enumerate(zip(rows, masks, missing)):
        assert allowed[b] == reference_allowed(row, real, row_missing), f"row {b}"


def test_no_row_of_the_mask_is_empty_and_padding_is_never_a_key_of_a_real_token():
    rows, masks, missing = random_batch(11)
    allowed = allowed_attention(layout_of(rows, masks), torch.tensor(missing))
    assert bool(allowed.any(dim=-1).all())
    real = torch.tensor(masks).bool()
    padding_keys = allowed & ~real[:, None, :] & real[:, :, None]
    assert not bool(padding_keys.any())


def test_additive_mask_is_zero_where_allowed_and_the_dtype_minimum_elsewhere():
    allowed = allowed_attention(layout_of([[7] + BLOCK + [9]]))
    for dtype in (torch.float32, torch.bfloat16):
        additive = to_additive_mask(allowed, dtype)
        assert additive.shape == (1, 1, allowed.shape[1], allowed.shape[2]) and additive.dtype == dtype
        assert bool((additive[:, 0] == 0).eq(allowed).all())
        assert bool((additive[:, 0][~allowed] == torch.finfo(dtype).min).all())


# --------------------------------------------------------------------------------------------------
# Malformed layouts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, mask, message",
    [
        ([[START] + [FMRI] * (N - 1) + [END]], None, f"has {N - 1} '<fmri>' placeholders, expected {N}"),
        ([[7] + [FMRI] * N + [END]], None, "preceded by '<fmri_start>'"),
        ([[START] + [FMRI] * N + [7]], None, "followed by '<fmri_end>'"),
        ([BLOCK + [START, 7]], None, "2 '<fmri_start>'"),
        ([BLOCK + [7, END]], None, "2 '<fmri_end>'"),
        ([BLOCK + [7]], [[1] * 5 + [0] + [1] * 6], "attention_mask is 0"),
        ([[1, 2, 3]][0], None, "input_ids must be shaped"),
    ],
)
def test_malformed_layouts_are_refused(rows, mask, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layout_of(rows, mask)
