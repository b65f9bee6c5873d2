import pytest

from edgeproxy.cache.cachestatus import FWD_VALUES, CacheStatus, sf_string

CS = CacheStatus()


@pytest.mark.parametrize(
    "value, expected",
    [
        (CS.hit(376.9), b"edgeproxy; hit; ttl=376"),
        (CS.hit(-0.5), b"edgeproxy; hit; ttl=-1"),
        (CS.hit(5, key="http://a/b"), b'edgeproxy; hit; ttl=5; key="http://a/b"'),
        (CS.forward("uri-miss", stored=True), b"edgeproxy; fwd=uri-miss; stored"),
        (CS.forward("vary-miss"), b"edgeproxy; fwd=vary-miss"),
        (CS.forward("stale", fwd_status=304, ttl=60), b"edgeproxy; fwd=stale; fwd-status=304; ttl=60"),
        (CS.forward("request"), b"edgeproxy; fwd=request"),
        (CS.forward("bypass", detail="config"), b'edgeproxy; fwd=bypass; detail="config"'),
        (CS.forward("method"), b"edgeproxy; fwd=method"),
        (CS.forward("miss", collapsed=True), b"edgeproxy; fwd=miss; collapsed"),
        (CS.plain(detail="only-if-cached"), b'edgeproxy; detail="only-if-cached"'),
        (CacheStatus(b"edge-7").hit(1), b"edge-7; hit; ttl=1"),
    ],
)
def test_values(value, expected):
    assert value == expected


@pytest.mark.parametrize(
    "value, expected",
    [("plain", b'"plain"'), ('a"b\\c', b'"a\\"b\\\\c"'), ("a\r\nb", b'"ab"'), (b"x\x00y", b'"xy"')],
)
def test_sf_string(value, expected):
    assert sf_string(value) == expected


def test_every_fwd_value_is_prebuilt():
    assert all(CS.forward(f).endswith(b"fwd=" + f.encode()) for f in FWD_VALUES)
    with pytest.raises(KeyError):
        CS.forward("nonsense")
