"""StopMatcher: stop strings across token boundaries and split UTF-8, without a model."""

from nexa.engines.stops import StopMatcher


def feed_all(m: StopMatcher, pieces: list[bytes]) -> str:
    out = ""
    for p in pieces:
        out += m.feed(p)
        if m.stopped:
            return out
    return out + m.flush()


def test_stop_string_split_across_tokens_is_never_emitted():
    m = StopMatcher(["END"])
    emitted = [m.feed(b"hello E"), m.feed(b"N"), m.feed(b"D tail")]
    assert "".join(emitted) == "hello "
    assert m.stopped
    assert all("E" not in e for e in emitted[1:])


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    m = StopMatcher(["END"])
    assert m.feed(b"an E") == "an "
    assert m.feed(b"xit") == "Exit"
    assert not m.stopped


def test_text_ending_in_no_stop_strings_start_is_not_held():
    m = StopMatcher(["END"])
    assert m.feed(b"the D") == "the D"  # "D" ends "END" but starts no part of it a later token could finish
    assert m.feed(b" and E") == " and "
    assert m.feed(b"NDED") == ""
    assert m.stopped and m.matched == "END"


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["world", "lo w"])
    assert feed_all(m, [b"hello world"]) == "hel"


def test_split_utf8_is_joined_not_replaced():
    snow = "☃".encode()
    m = StopMatcher([])
    assert feed_all(m, [snow[:1], snow[1:2], snow[2:], b"!"]) == "☃!"


def test_no_stops_passes_text_straight_through():
    m = StopMatcher([])
    assert m.feed(b"abc") == "abc"
    assert m.flush() == ""
