"""Format "sparkplug_b": BIRTH and DATA to readings, alias state, sequence gaps, deaths, limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.mqtt import Subscription
from gateway.config.sections import LimitSettings
from gateway.config.sparkplug import SparkplugSettings
from gateway.ingest.core.decode import Decoder
from gateway.sparkplug.core.payload import DataType, Payload, compress, encode, parse, value_of
from gateway.sparkplug.core.session import NOTE_PREFIX
from tests.wholepath import check_message

NOW_NS = 1_700_000_000_000_000_000
NOW_MS = NOW_NS // 1_000_000
D = DataType


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def decoder(**sparkplug) -> tuple[Decoder, Clock, list]:
    states: list = []
    sub = Subscription(topic="spBv1.0/#", format="sparkplug_b")
    dec = Decoder(
        [sub], LimitSettings(), SparkplugSettings(**sparkplug), lambda *a: states.append(a)
    )
    clock = Clock()
    dec.sparkplug._clock = clock
    return dec, clock, states


def nbirth(seq: int = 0, bd: int = 1) -> bytes:
    return encode(
        NOW_MS,
        [
            ("bdSeq", None, D.Int64, bd, None),
            ("Node Control/Rebirth", 0, D.Boolean, False, None),
            ("Temperature", 1, D.Double, 21.5, None),
            ("Count", 2, D.Int32, -3, None),
        ],
        seq=seq,
    )


def fields(decoded) -> list:
    return [(r.device, r.measurement, r.tags, r.fields) for r in decoded.readings]


def test_birth_then_data_by_alias_lands_named_and_typed() -> None:
    dec, _, states = decoder()
    birth = dec.decode("spBv1.0/plant/NBIRTH/edge1", nbirth(), NOW_NS)
    tags = (("edge_node", "edge1"), ("group", "plant"))
    assert fields(birth) == [
        ("plant/edge1", "Temperature", tags, (("value", 21.5),)),
        ("plant/edge1", "Count", tags, (("value", -3),)),
    ]
    assert list(birth.notes) == [NOTE_PREFIX + b"plant\0edge1"]
    data = dec.decode(
        "spBv1.0/plant/NDATA/edge1",
        encode(NOW_MS, [(None, 1, None, 22.0, NOW_MS - 5), (None, 2, None, 7, None)], seq=1),
        NOW_NS,
    )
    assert not data.errors
    assert fields(data) == [
        ("plant/edge1", "Temperature", tags, (("value", 22.0),)),
        ("plant/edge1", "Count", tags, (("value", 7),)),
    ]
    assert [r.ts_ns for r in data.readings] == [NOW_NS - 5_000_000, NOW_NS]
    assert data.notes == {}  # DATA changes no stored state
    assert ("plant", "edge1", None, True) in states


def test_device_birth_and_data_carry_the_device_tag_and_fifo() -> None:
    dec, _, _ = decoder(measurements={"Sensors/*": "sensors", "Speed": "motor"})
    dec.decode("spBv1.0/g/NBIRTH/n", nbirth(), NOW_NS)
    dbirth = encode(
        NOW_MS,
        [("Sensors/Temp", 10, D.Float, 1.5, None), ("Speed", 11, D.UInt16, 900, None)],
        seq=1,
    )
    dec.decode("spBv1.0/g/DBIRTH/n/pump", dbirth, NOW_NS)
    data = dec.decode(
        "spBv1.0/g/DDATA/n/pump",
        encode(NOW_MS, [(None, 10, None, 2.5, None), (None, 11, None, 1000, None)], seq=2),
        NOW_NS,
    )
    tags = (("device", "pump"), ("edge_node", "n"), ("group", "g"))
    assert fields(data) == [
        ("g/n/pump", "sensors", tags, (("Temp", 2.5),)),
        ("g/n/pump", "motor", tags, (("value", 1000),)),
    ]


def test_unknown_alias_is_invalid_and_asks_one_rebirth_per_interval() -> None:
    dec, clock, _ = decoder(rebirth_interval_s=30)
    data = encode(NOW_MS, [(None, 5, None, 1.0, None)], seq=4)
    first = dec.decode("spBv1.0/g/NDATA/n", data, NOW_NS)
    assert [e.reason for e in first.errors] == ["sparkplug_unknown_alias"]
    assert len(first.commands) == 1
    topic, payload = first.commands[0]
    assert topic == "spBv1.0/g/NCMD/n"
    request = parse(payload, 1 << 20).metrics[0]
    assert (request.name, request.datatype, request.boolean_value) == (
        "Node Control/Rebirth",
        D.Boolean,
        True,
    )
    clock.now = 10
    assert (
        dec.decode(
            "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 5, None, 1.0, None)], seq=5), NOW_NS
        ).commands
        == []
    )
    clock.now = 31
    assert (
        len(
            dec.decode(
                "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 5, None, 1.0, None)], seq=6), NOW_NS
            ).commands
        )
        == 1
    )


def test_a_sequence_gap_refuses_the_message_and_asks_a_rebirth() -> None:
    dec, _, _ = decoder()
    dec.decode("spBv1.0/g/NBIRTH/n", nbirth(seq=0), NOW_NS)
    ok = dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 1.0, None)], seq=1), NOW_NS
    )
    assert ok.readings
    assert not ok.commands
    gap = dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 1.0, None)], seq=3), NOW_NS
    )
    assert [e.reason for e in gap.errors] == ["sparkplug_seq_gap"]
    assert not gap.readings
    assert len(gap.commands) == 1
    # The sequence resumes from the gap; a redelivery (dup) is not a gap.
    after = dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 2.0, None)], seq=4), NOW_NS
    )
    assert after.readings
    assert not after.errors
    dup = dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 2.0, None)], seq=4), NOW_NS, dup=True
    )
    assert dup.readings
    assert not dup.errors
    # Wrapping 255 -> 0 is no gap; a new connection forgets the numbers.
    dec.sparkplug.sessions.nodes["g", "n"].seq = 255
    assert not dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 2.0, None)], seq=0), NOW_NS
    ).errors
    dec.sparkplug.sessions.forget_sequences()
    assert not dec.decode(
        "spBv1.0/g/NDATA/n", encode(NOW_MS, [(None, 1, None, 2.0, None)], seq=77), NOW_NS
    ).errors


def test_death_with_matching_bdseq_takes_node_and_devices_offline() -> None:
    dec, _, states = decoder()
    dec.decode("spBv1.0/g/NBIRTH/n", nbirth(bd=7), NOW_NS)
    dec.decode("spBv1.0/g/DBIRTH/n/d", encode(NOW_MS, [("x", 1, D.Int8, 1, None)], seq=1), NOW_NS)
    stale = dec.decode(
        "spBv1.0/g/NDEATH/n", encode(NOW_MS, [("bdSeq", None, D.Int64, 6, None)]), NOW_NS
    )
    assert stale.notes == {}
    assert dec.sparkplug.sessions.snapshot()[0]["online"] is True
    death = dec.decode(
        "spBv1.0/g/NDEATH/n", encode(NOW_MS, [("bdSeq", None, D.Int64, 7, None)]), NOW_NS + 1
    )
    assert list(death.notes) == [NOTE_PREFIX + b"g\0n"]
    (node,) = dec.sparkplug.sessions.snapshot()
    assert (node["online"], node["devices"][0]["online"]) == (False, False)
    assert states[-2:] == [("g", "n", None, False), ("g", "n", "d", False)]


def test_state_reloads_from_notes_and_decodes_data_without_a_birth() -> None:
    dec, _, _ = decoder()
    notes = {}
    notes.update(dec.decode("spBv1.0/g/NBIRTH/n", nbirth(), NOW_NS).notes)
    notes.update(
        dec.decode(
            "spBv1.0/g/DBIRTH/n/d", encode(NOW_MS, [("x", 3, D.Int8, -1, None)], seq=1), NOW_NS
        ).notes
    )
    restarted, _, states = decoder()
    restarted.sparkplug.sessions.load(notes)
    assert ("g", "n", "d", True) in states
    data = restarted.decode(
        "spBv1.0/g/DDATA/n/d", encode(NOW_MS, [(None, 3, None, -2, None)], seq=9), NOW_NS
    )
    assert not data.errors
    assert fields(data)[0][1:] == (
        "x",
        (("device", "d"), ("edge_node", "n"), ("group", "g")),
        (("value", -2),),
    )


def test_unsupported_and_null_metrics_are_counted_not_dropped_silently() -> None:
    dec, _, _ = decoder()
    message = Payload(timestamp=NOW_MS, seq=0)
    bad = message.metrics.add(name="Table", alias=1, datatype=D.DataSet)
    bad.dataset_value.num_of_columns = 0
    message.metrics.add(name="Blob", alias=2, datatype=D.Bytes, bytes_value=b"x")
    message.metrics.add(name="Missing", alias=3, datatype=D.Double, is_null=True)
    message.metrics.add(name="Ok", alias=4, datatype=D.Boolean, boolean_value=True)
    decoded = dec.decode("spBv1.0/g/NBIRTH/n", message.SerializeToString(), NOW_NS)
    assert sorted(e.reason for e in decoded.errors) == [
        "sparkplug_null_value",
        "sparkplug_unsupported_type",
        "sparkplug_unsupported_type",
    ]
    assert [r.measurement for r in decoded.readings] == ["Ok"]


def deep_template(depth: int) -> bytes:
    message = Payload(timestamp=NOW_MS, seq=0)
    metric = message.metrics.add(name="t", alias=1, datatype=D.Template)
    template = metric.template_value
    for _ in range(depth):
        template = template.metrics.add(name="t", datatype=D.Template).template_value
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff", "sparkplug_bad_protobuf"),
        (b"\x12\x00" * 50_000, "too_many_readings"),  # 50,000 empty metrics in 100 kB
        (deep_template(200), "sparkplug_bad_protobuf"),  # deeper than protobuf's limit
        (b"\x12\x07\x0a\x03\xff\xfe\xfd\x20\x0a", "sparkplug_bad_birth"),  # name not UTF-8
    ],
)
def test_hostile_payloads_are_refused_whole(payload: bytes, reason: str) -> None:
    dec, _, _ = decoder()
    decoded = dec.decode("spBv1.0/g/NBIRTH/n", payload, NOW_NS)
    assert [e.reason for e in decoded.errors] == [reason]
    assert not decoded.readings
    # A BIRTH with one bad metric still births its node; a refused message changes nothing.
    assert bool(decoded.notes) == (reason == "sparkplug_bad_birth")


def test_a_huge_alias_table_is_refused_by_the_budget() -> None:
    dec, _, _ = decoder(max_aliases=100)
    birth = encode(NOW_MS, [(f"m{i}", i, D.Double, 1.0, None) for i in range(101)], seq=0)
    decoded = dec.decode("spBv1.0/g/NBIRTH/n", birth, NOW_NS)
    assert [e.reason for e in decoded.errors] == ["sparkplug_too_many_aliases"]
    assert not decoded.readings
    assert not decoded.notes


def test_commands_and_host_states_are_not_readings() -> None:
    dec, _, _ = decoder()
    for topic in ("spBv1.0/g/NCMD/n", "spBv1.0/STATE/host", "spBv1.0/g/DCMD/n/d"):
        decoded = dec.decode(topic, b"\x00garbage", NOW_NS)
        assert (decoded.readings, decoded.errors) == ([], [])
    assert [e.reason for e in dec.decode("spBv1.0/g/NOPE/n", b"", NOW_NS).errors] == [
        "sparkplug_bad_topic"
    ]


SCALARS = st.one_of(
    st.tuples(st.sampled_from([D.Int8]), st.integers(-(2**7), 2**7 - 1)),
    st.tuples(st.sampled_from([D.Int16]), st.integers(-(2**15), 2**15 - 1)),
    st.tuples(st.sampled_from([D.Int32]), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.sampled_from([D.Int64]), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.sampled_from([D.UInt8]), st.integers(0, 2**8 - 1)),
    st.tuples(st.sampled_from([D.UInt32]), st.integers(0, 2**32 - 1)),
    st.tuples(st.sampled_from([D.UInt64, D.DateTime]), st.integers(0, 2**63 - 1)),
    st.tuples(st.sampled_from([D.Double]), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(
        st.sampled_from([D.Float]), st.floats(width=32, allow_nan=False, allow_infinity=False)
    ),
    st.tuples(st.sampled_from([D.Boolean]), st.booleans()),
    st.tuples(st.sampled_from([D.String, D.Text, D.UUID]), st.text(max_size=50)),
)


@given(values=st.lists(SCALARS, min_size=1, max_size=20), seq=st.integers(0, 255))
def test_encoded_scalars_decode_to_the_same_values(values, seq) -> None:
    metrics = [(f"m{i}", i, dt, v, NOW_MS + i) for i, (dt, v) in enumerate(values)]
    message = parse(encode(NOW_MS, metrics, seq=seq), 1 << 20)
    assert message.seq == seq
    for metric, (_, alias, datatype, value, ts) in zip(message.metrics, metrics, strict=True):
        assert (metric.alias, metric.timestamp) == (alias, ts)
        got = value_of(metric, datatype)
        assert got == value or (math.isnan(got) and math.isnan(value))
        assert type(got) is type(value)


# Names and strings as hostile as a node can send: line-protocol syntax, escapes, control
# characters, non-ASCII; the write body must still hold exactly the readings.
HOSTILE_TEXT = st.text(
    # Surrogates cannot be encoded as UTF-8 at all: no node can send them.
    alphabet=st.one_of(
        st.sampled_from(' ,="\\\n\t/#+'), st.characters(blacklist_categories=("Cs",))
    ),
    min_size=1,
    max_size=20,
)


@given(
    group=HOSTILE_TEXT.filter(lambda t: "/" not in t and "+" not in t and "#" not in t),
    names=st.lists(HOSTILE_TEXT, min_size=1, max_size=8, unique=True),
    text=HOSTILE_TEXT,
    number=st.floats(allow_nan=False, allow_infinity=False),
)
def test_hostile_names_cross_the_whole_path_escaped(group, names, text, number) -> None:
    metrics = [
        (name, i, D.String if i % 2 else D.Double, text if i % 2 else number, None)
        for i, name in enumerate(names)
    ]
    metrics.append(("plain", len(names), D.Double, 1.5, None))
    birth = encode(NOW_MS, metrics, seq=0)
    data = encode(NOW_MS, [(None, i, None, v, None) for _, i, _, v, _ in metrics], seq=1)
    for where in (group, "plain group"):
        dec, _, _ = decoder()
        born = check_message(dec, f"spBv1.0/{where}/NBIRTH/n".encode(), birth, sparkplug=True)
        # The same metrics by alias: exactly as many readings, with the BIRTH's names.
        read = check_message(dec, f"spBv1.0/{where}/NDATA/n".encode(), data, sparkplug=True)
        assert read == born
    assert born >= 1, "the metric named 'plain' in a plain group is a reading"


@given(
    payload=st.binary(max_size=400),
    kind=st.sampled_from(["NBIRTH", "NDATA", "DBIRTH", "DDATA", "NDEATH"]),
)
def test_any_bytes_cross_the_whole_path(payload: bytes, kind: str) -> None:
    dec, _, _ = decoder()
    device = "/d" if kind.startswith("D") else ""
    check_message(dec, f"spBv1.0/g/{kind}/n{device}".encode(), payload, sparkplug=True)


def test_data_of_unknown_nodes_makes_no_state_and_max_nodes_bounds_births() -> None:
    dec, clock, _ = decoder(max_nodes=2)
    for i in range(50):  # made-up node ids: counted, asked, and forgotten
        clock.now += 1
        data = dec.decode(
            f"spBv1.0/g/NDATA/n{i}", encode(NOW_MS, [(None, 1, None, 1.0, None)]), NOW_NS
        )
        assert [e.reason for e in data.errors] == ["sparkplug_unknown_alias"]
        assert data.commands
    assert dec.sparkplug.sessions.nodes == {}
    # A metric with its name and type needs no BIRTH.
    named = encode(NOW_MS, [("Flow", None, D.Double, 3.5, None)], seq=5)
    assert [r.measurement for r in dec.decode("spBv1.0/g/NDATA/x", named, NOW_NS).readings] == [
        "Flow"
    ]
    # Births make state, up to max_nodes nodes and devices.
    assert not dec.decode("spBv1.0/g/NBIRTH/a", nbirth(), NOW_NS).errors
    assert not dec.decode(
        "spBv1.0/g/DBIRTH/a/d", encode(NOW_MS, [("x", 1, D.Int8, 1, None)], seq=1), NOW_NS
    ).errors
    refused = dec.decode("spBv1.0/g/NBIRTH/b", nbirth(), NOW_NS)
    assert [e.reason for e in refused.errors] == ["sparkplug_too_many_nodes"]
    assert not refused.readings
    assert not refused.notes


@pytest.mark.parametrize("algorithm", [None, "DEFLATE", "GZIP"])
def test_compressed_payloads_are_inflated(algorithm: str | None) -> None:
    dec, _, _ = decoder()
    birth = compress(nbirth(), algorithm)
    decoded = dec.decode("spBv1.0/g/NBIRTH/n", birth, NOW_NS)
    assert not decoded.errors
    assert [r.measurement for r in decoded.readings] == ["Temperature", "Count"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # 300 kB of zeros in a few hundred bytes: over [limits] max_payload_bytes once inflated.
        (
            compress(encode(NOW_MS, [("x", 1, D.String, "0" * 300_000, None)], seq=0)),
            "payload_too_large",
        ),
        (compress(nbirth(), "LZ4"), "sparkplug_bad_compression"),
        (
            Payload(uuid="SPBV1.0_COMPRESSED", body=b"not zlib").SerializeToString(),
            "sparkplug_bad_compression",
        ),
        (compress(compress(nbirth())), "sparkplug_bad_compression"),
    ],
)
def test_compression_bombs_and_strangers_are_refused(payload: bytes, reason: str) -> None:
    dec, _, _ = decoder()
    decoded = dec.decode("spBv1.0/g/NBIRTH/n", payload, NOW_NS)
    assert [e.reason for e in decoded.errors] == [reason]
    assert not decoded.readings
    assert not decoded.notes


def test_a_metric_without_any_timestamp_gets_the_receipt_in_multiples_of_8() -> None:
    """No metric nor payload timestamp: the receipt time, its low 3 bits cleared."""
    dec, _, _ = decoder()
    dec.decode("spBv1.0/plant/NBIRTH/edge1", nbirth(), NOW_NS)
    data = Payload()
    data.ParseFromString(encode(NOW_MS, [(None, 1, None, 22.0, None)], seq=1))
    data.ClearField("timestamp")
    (reading,) = dec.decode(
        "spBv1.0/plant/NDATA/edge1", data.SerializeToString(), NOW_NS + 13
    ).readings
    assert reading.ts_ns == NOW_NS + 8
