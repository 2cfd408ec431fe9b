"""HPACK decoder against RFC 7541 Appendix C, plus desynchronisation behaviour."""

from __future__ import annotations

import pytest

from podspan_agent.protocols import hpack


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


REQUESTS_PLAIN = [  # C.3
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
REQUESTS_HUFFMAN = [  # C.4
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]
REQUEST_HEADERS = [
    [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
    [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ],
    [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ],
]
REQUEST_TABLE_SIZES = [57, 110, 164]

RESPONSES_PLAIN = [  # C.5
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a"
    " 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04"
    " 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49"
    " 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
]
RESPONSES_HUFFMAN = [  # C.6
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e"
    " 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7"
    " 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed"
    " 4ee5 b106 3d50 07",
]
_FIRST = [
    (":status", "302"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("location", "https://www.example.com"),
]
RESPONSE_HEADERS = [
    _FIRST,
    [(":status", "307"), *_FIRST[1:]],
    [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
    ],
]
RESPONSE_TABLE_SIZES = [222, 222, 215]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572", ("custom-key", "custom-header")),
        ("040c 2f73 616d 706c 652f 7061 7468", (":path", "/sample/path")),
        ("1008 7061 7373 776f 7264 0673 6563 7265 74", ("password", "secret")),
        ("82", (":method", "GET")),
    ],
)
def test_c2_single_fields(block: str, expected: tuple[str, str]) -> None:
    decoder = hpack.Decoder()
    result = decoder.decode(_hex(block))
    assert result.headers == [expected]
    assert result.unknown == 0
    # Only the first example uses incremental indexing: 55 octets in the table.
    assert decoder.table_size == (55 if expected[0] == "custom-key" else 0)


@pytest.mark.parametrize("blocks", [REQUESTS_PLAIN, REQUESTS_HUFFMAN], ids=["C.3", "C.4"])
def test_request_sequences(blocks: list[str]) -> None:
    decoder = hpack.Decoder()
    for block, headers, size in zip(blocks, REQUEST_HEADERS, REQUEST_TABLE_SIZES, strict=True):
        assert decoder.decode(_hex(block)).headers == headers
        assert decoder.table_size == size
    assert decoder.synchronised


@pytest.mark.parametrize("blocks", [RESPONSES_PLAIN, RESPONSES_HUFFMAN], ids=["C.5", "C.6"])
def test_response_sequences_with_eviction(blocks: list[str]) -> None:
    decoder = hpack.Decoder(max_size=256)
    for block, headers, size in zip(blocks, RESPONSE_HEADERS, RESPONSE_TABLE_SIZES, strict=True):
        assert decoder.decode(_hex(block)).headers == headers
        assert decoder.table_size == size
    assert decoder.synchronised


def test_huffman_rejects_eos_and_bad_padding() -> None:
    with pytest.raises(hpack.HpackError):
        hpack.huffman_decode(b"\xff\xff\xff\xff")  # contains the 30-bit EOS code
    with pytest.raises(hpack.HpackError):
        hpack.huffman_decode(b"\x00")  # '0' (5 bits 00000) then padding of zeros
    assert hpack.huffman_decode(b"") == b""


def test_joined_mid_connection_never_invents_headers() -> None:
    # A decoder that missed C.4.1 sees C.4.2: index 62 (0xbe) cannot be resolved.
    decoder = hpack.Decoder(synchronised=False)
    result = decoder.decode(_hex(REQUESTS_HUFFMAN[1]))
    assert result.headers == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        ("cache-control", "no-cache"),
    ]
    assert result.unknown == 1
    # The entry inserted after the loss is known: it is index 62 in C.4.3 ... but
    # C.4.3 refers to 63 (0xbf) for :authority, which was inserted before the loss.
    third = decoder.decode(_hex(REQUESTS_HUFFMAN[2]))
    assert ("custom-key", "custom-value") in third.headers
    assert (":authority", "www.example.com") not in third.headers
    assert third.unknown == 1


def test_synchronised_decoder_desynchronises_on_bad_index() -> None:
    decoder = hpack.Decoder()
    result = decoder.decode(b"\x82\xc0\x84")  # index 64 with an empty table
    assert result.headers == [(":method", "GET")]
    assert not decoder.synchronised
    assert decoder.desync_count == 1


def test_truncated_block_returns_prefix_and_desynchronises() -> None:
    decoder = hpack.Decoder()
    block = _hex(REQUESTS_PLAIN[0])
    result = decoder.decode(block[:8], complete=False)
    assert result.headers == [(":method", "GET"), (":scheme", "http"), (":path", "/")]
    assert not decoder.synchronised


def test_size_update_to_zero_resynchronises() -> None:
    decoder = hpack.Decoder(synchronised=False)
    # 0x20: table size 0, 0x3f e1 1f: table size 4096, then literal with indexing.
    decoder.decode(
        b"\x20\x3f\xe1\x1f" + _hex("400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65")
    )
    assert decoder.synchronised
    assert decoder.max_size == 4096
    assert decoder.decode(b"\xbe").headers == [("custom-key", "custom-value")]


def test_oversized_table_update_is_refused() -> None:
    decoder = hpack.Decoder()
    decoder.decode(b"\x3f\xe1\xff\x7f")  # about 2 MiB
    assert not decoder.synchronised
    assert decoder.max_size == hpack.DEFAULT_TABLE_SIZE
