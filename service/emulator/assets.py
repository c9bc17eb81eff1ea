"""Tiny but real media for the emulator's downloads: an H.264 MP4 and baseline JPEGs, built in pure Python.

The MP4 is an ISO-BMFF file (``ftyp``, ``moov`` with ``mvhd``/``trak``/``stbl``, ``mdat``) holding one 16x16
H.264 Baseline track whose frames are single I_PCM macroblocks, so any decoder can play it. The JPEGs are
baseline YCbCr images made of flat 8x8 blocks (DC coefficients only), which keeps the encoder a few lines.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

RGB = tuple[int, int, int]

# --- H.264 -----------------------------------------------------------------------------------------------


class _BitWriter:
    def __init__(self) -> None:
        self._bits: list[int] = []

    def u(self, value: int, width: int) -> None:
        self._bits.extend((value >> shift) & 1 for shift in range(width - 1, -1, -1))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(0, code.bit_length() - 1)
        self.u(code, code.bit_length())

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align_zero(self) -> None:
        while len(self._bits) % 8:
            self._bits.append(0)

    def trailing(self) -> None:
        self._bits.append(1)
        self.align_zero()

    def raw(self, data: bytes) -> None:
        for byte in data:
            self.u(byte, 8)

    def to_bytes(self) -> bytes:
        assert len(self._bits) % 8 == 0
        out = bytearray()
        for i in range(0, len(self._bits), 8):
            byte = 0
            for bit in self._bits[i : i + 8]:
                byte = (byte << 1) | bit
            out.append(byte)
        return bytes(out)


def _nal(header: int, rbsp: bytes) -> bytes:
    """Wrap an RBSP in a NAL unit, inserting emulation-prevention bytes."""
    out = bytearray([header])
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps() -> bytes:
    w = _BitWriter()
    w.u(66, 8)  # profile_idc: Baseline
    w.u(0xC0, 8)  # constraint_set0 and set1
    w.u(10, 8)  # level 1.0
    w.ue(0)  # seq_parameter_set_id
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(2)  # pic_order_cnt_type
    w.ue(1)  # max_num_ref_frames
    w.u(0, 1)  # gaps_in_frame_num_value_allowed_flag
    w.ue(0)  # pic_width_in_mbs_minus1 (16 px)
    w.ue(0)  # pic_height_in_map_units_minus1 (16 px)
    w.u(1, 1)  # frame_mbs_only_flag
    w.u(1, 1)  # direct_8x8_inference_flag
    w.u(0, 1)  # frame_cropping_flag
    w.u(0, 1)  # vui_parameters_present_flag
    w.trailing()
    return _nal(0x67, w.to_bytes())


def _pps() -> bytes:
    w = _BitWriter()
    w.ue(0)  # pic_parameter_set_id
    w.ue(0)  # seq_parameter_set_id
    w.u(0, 1)  # entropy_coding_mode_flag: CAVLC
    w.u(0, 1)  # bottom_field_pic_order_in_frame_present_flag
    w.ue(0)  # num_slice_groups_minus1
    w.ue(0)  # num_ref_idx_l0_default_active_minus1
    w.ue(0)  # num_ref_idx_l1_default_active_minus1
    w.u(0, 1)  # weighted_pred_flag
    w.u(0, 2)  # weighted_bipred_idc
    w.se(0)  # pic_init_qp_minus26
    w.se(0)  # pic_init_qs_minus26
    w.se(0)  # chroma_qp_index_offset
    w.u(0, 1)  # deblocking_filter_control_present_flag
    w.u(0, 1)  # constrained_intra_pred_flag
    w.u(0, 1)  # redundant_pic_cnt_present_flag
    w.trailing()
    return _nal(0x68, w.to_bytes())


def _ycbcr(rgb: RGB) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return tuple(max(1, min(255, round(v))) for v in (y, cb, cr))  # type: ignore[return-value]


def _idr_frame(idr_pic_id: int, rgb: RGB) -> bytes:
    """One 16x16 IDR picture: a single I_PCM macroblock of a flat colour."""
    y, cb, cr = _ycbcr(rgb)
    w = _BitWriter()
    w.ue(0)  # first_mb_in_slice
    w.ue(7)  # slice_type: I (all slices)
    w.ue(0)  # pic_parameter_set_id
    w.u(0, 4)  # frame_num
    w.ue(idr_pic_id)  # consecutive IDR pictures need different ids
    w.u(0, 1)  # no_output_of_prior_pics_flag
    w.u(0, 1)  # long_term_reference_flag
    w.se(0)  # slice_qp_delta
    w.ue(25)  # mb_type: I_PCM
    w.align_zero()  # pcm_alignment_zero_bit
    w.raw(bytes([y]) * 256 + bytes([cb]) * 64 + bytes([cr]) * 64)
    w.trailing()
    return _nal(0x65, w.to_bytes())


# --- ISO-BMFF --------------------------------------------------------------------------------------------


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _moov(samples: Sequence[bytes], sps: bytes, pps: bytes, mdat_offset: int, size: int) -> bytes:
    timescale = 1000
    delta = 1000
    duration = delta * len(samples)
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, timescale, duration),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", 2),
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x000003,
        struct.pack(">IIIII", 0, 0, 1, 0, duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", size << 16, size << 16),
    )
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, duration, 0x55C4, 0))
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I4s", 0, b"vide"), bytes(12), b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, struct.pack(">HHHH", 0, 0, 0, 0))
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)),
        sps,
        bytes([1]),
        struct.pack(">H", len(pps)),
        pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),
        struct.pack(">HHIIIH", size, size, 0x00480000, 0x00480000, 0, 1),
        bytes([8]) + b"sorahook".ljust(31, b"\x00"),
        struct.pack(">Hh", 0x0018, -1),
        avcc,
    )
    stsd = _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1)
    stts = _full_box(b"stts", 0, 0, struct.pack(">III", 1, len(samples), delta))
    stss = _full_box(
        b"stss",
        0,
        0,
        struct.pack(">I", len(samples)),
        *(struct.pack(">I", i + 1) for i in range(len(samples))),
    )
    stsc = _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, len(samples), 1))
    stsz = _full_box(
        b"stsz", 0, 0, struct.pack(">II", 0, len(samples)), *(struct.pack(">I", len(s)) for s in samples)
    )
    stco = _full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset))
    stbl = _box(b"stbl", stsd, stts, stss, stsc, stsz, stco)
    minf = _box(b"minf", vmhd, dinf, stbl)
    mdia = _box(b"mdia", mdhd, hdlr, minf)
    trak = _box(b"trak", tkhd, mdia)
    return _box(b"moov", mvhd, trak)


def make_mp4(colors: Sequence[RGB], size: int = 16) -> bytes:
    """A playable MP4: one second per colour, a 16x16 H.264 Baseline track, ``moov`` before ``mdat``."""
    if size != 16:
        raise ValueError("only 16x16 frames are supported")
    sps, pps = _sps(), _pps()
    samples = [
        struct.pack(">I", len(frame)) + frame
        for frame in (_idr_frame(i % 2, color) for i, color in enumerate(colors))
    ]
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso2", b"avc1", b"mp41")
    moov_len = len(_moov(samples, sps, pps, 0, size))
    moov = _moov(samples, sps, pps, len(ftyp) + moov_len + 8, size)
    return ftyp + moov + _box(b"mdat", *samples)


# --- JPEG ------------------------------------------------------------------------------------------------

# Our own Huffman tables: every DC category 0..11 gets a 4-bit code, and AC has only end-of-block ("0").
_DC_COUNTS = bytes([0, 0, 0, 12] + [0] * 12)
_DC_SYMBOLS = bytes(range(12))
_AC_COUNTS = bytes([1] + [0] * 15)
_AC_SYMBOLS = bytes([0x00])


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def make_jpeg(width: int, height: int, block_color: Sequence[Sequence[RGB]]) -> bytes:
    """A baseline JPEG whose 8x8 blocks are flat colours: ``block_color[row][col]`` for each block."""
    if width % 8 or height % 8:
        raise ValueError("width and height must be multiples of 8")
    rows, cols = height // 8, width // 8
    bits: list[int] = []
    previous = [0, 0, 0]
    for row in range(rows):
        for col in range(cols):
            for comp, value in enumerate(_ycbcr(block_color[row][col])):
                dc = 8 * (value - 128)  # the DC term of a flat block with quantiser 1
                diff, previous[comp] = dc - previous[comp], dc
                category = abs(diff).bit_length()
                bits.extend((category >> s) & 1 for s in (3, 2, 1, 0))
                extra = diff if diff >= 0 else diff + (1 << category) - 1
                bits.extend((extra >> s) & 1 for s in range(category - 1, -1, -1))
                bits.append(0)  # AC: end of block
    bits.extend([1] * (-len(bits) % 8))
    scan = bytearray()
    for i in range(0, len(bits), 8):
        byte = 0
        for bit in bits[i : i + 8]:
            byte = (byte << 1) | bit
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0x00)
    components = b"".join(bytes([cid, 0x11, 0]) for cid in (1, 2, 3))
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
            _segment(0xDB, bytes([0x00]) + bytes([1]) * 64),
            _segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + components),
            _segment(
                0xC4, bytes([0x00]) + _DC_COUNTS + _DC_SYMBOLS + bytes([0x10]) + _AC_COUNTS + _AC_SYMBOLS
            ),
            _segment(0xDA, bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])),
            bytes(scan),
            b"\xff\xd9",
        ]
    )


def _gradient(width: int, height: int, top: RGB, bottom: RGB) -> list[list[RGB]]:
    rows, cols = height // 8, width // 8
    grid: list[list[RGB]] = []
    for row in range(rows):
        t = row / max(1, rows - 1)
        line: list[RGB] = []
        for col in range(cols):
            shade = 0.85 + 0.15 * col / max(1, cols - 1)
            rgb = tuple(round(shade * (a + (b - a) * t)) for a, b in zip(top, bottom, strict=True))
            line.append(rgb)  # type: ignore[arg-type]
        grid.append(line)
    return grid


def _spritesheet(tiles_x: int, tiles_y: int, tile_w: int, tile_h: int) -> bytes:
    grid: list[list[RGB]] = [[(0, 0, 0)] * (tiles_x * tile_w // 8) for _ in range(tiles_y * tile_h // 8)]
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            n = ty * tiles_x + tx
            tile = _gradient(tile_w, tile_h, (40 + 25 * n, 60, 160 - 15 * n), (230, 120 + 10 * n, 40))
            for r, line in enumerate(tile):
                for c, rgb in enumerate(line):
                    grid[ty * tile_h // 8 + r][tx * tile_w // 8 + c] = rgb
    return make_jpeg(tiles_x * tile_w, tiles_y * tile_h, grid)


_FRAME_COLORS: list[RGB] = [(30, 60, 160), (90, 80, 170), (170, 100, 120), (230, 140, 40)]

VIDEO_MP4: bytes = make_mp4(_FRAME_COLORS)
THUMBNAIL_JPEG: bytes = make_jpeg(72, 128, _gradient(72, 128, (30, 60, 160), (230, 140, 40)))
SPRITESHEET_JPEG: bytes = _spritesheet(4, 2, 32, 56)

CONTENT: dict[str, tuple[bytes, str, str]] = {
    "video": (VIDEO_MP4, "video/mp4", "mp4"),
    "thumbnail": (THUMBNAIL_JPEG, "image/jpeg", "jpg"),
    "spritesheet": (SPRITESHEET_JPEG, "image/jpeg", "jpg"),
}
"""variant -> (bytes, content type, file extension)"""
