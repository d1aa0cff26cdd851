"""Each speed mechanism on the bench case it exists for, with and without it, in one run.

Not part of ``tox -e bench`` (the file name does not start with ``test_``); run it as::

    pytest bench/ablation_cases.py --benchmark-columns=min,median,rounds --benchmark-sort=name

A case runs ``on`` (every mechanism) and ``off_<mechanism>`` (``APPCONFIG_CACHE_ABLATE``
names it; the cache source reads it when it is made), interleaved twice, so both
sides see the same noise. ``bench/ablation.py`` measures the demo's rate the same way.
"""

from __future__ import annotations

import os

import pytest
from tests.support.clock import FakeClock

from appconfig_cache import AppConfigFragmentKey, AppConfigScopeType, FragmentInput

from . import test_read_path
from .support import NAMES, BenchSession, domain_config, measure, scaled, warm_valkey
from .test_stampede import test_stampede_l1_valkey as _stampede
from .test_throughput import test_throughput_l1_valkey as _throughput

PAIRS = 2


def _sides(*mechanisms: str) -> list:
    sides = []
    for pair in range(1, PAIRS + 1):
        sides.append(pytest.param("", id=f"on-{pair}"))
        sides += [pytest.param(m, id=f"off_{m}-{pair}") for m in mechanisms]
    return sides


@pytest.fixture
def ablate(request, monkeypatch) -> str:
    monkeypatch.setenv("APPCONFIG_CACHE_ABLATE", request.param)
    return request.param


@pytest.mark.benchmark(group="ablation: L2 hit")
@pytest.mark.parametrize("ablate", _sides("parse_memo"), indirect=True)
def test_l2_hit(benchmark, clean_valkey: BenchSession, ablate: str) -> None:
    test_read_path.test_l2_hit(benchmark, clean_valkey, 1024)


@pytest.mark.benchmark(group="ablation: miss, returning user")
@pytest.mark.parametrize("ablate", _sides("inline_lead"), indirect=True)
def test_miss_returning_user(benchmark, clean_valkey: BenchSession, ablate: str) -> None:
    test_read_path.test_miss_returning_user(benchmark, clean_valkey)


@pytest.mark.benchmark(group="ablation: stampede")
@pytest.mark.parametrize("ablate", _sides("fill_batching", "inline_lead"), indirect=True)
def test_stampede_l1_valkey(benchmark, clean_valkey: BenchSession, ablate: str) -> None:
    _stampede(benchmark, clean_valkey)


@pytest.mark.benchmark(group="ablation: Zipf throughput")
@pytest.mark.parametrize(
    "ablate", _sides("renewal", "renewal_wait", "fill_batching"), indirect=True
)
def test_throughput_l1_valkey(benchmark, bench: BenchSession, ablate: str) -> None:
    _throughput(benchmark, bench)


def _shared_write(benchmark, bench: BenchSession, *, same_process: bool) -> None:
    """A domain's theme changes; then every user of the domain reads every document.

    ``same_process``: the change goes through the reading cache source (its users'
    L1 entries are stale by a shared record only); else through another cache source
    (another process: the reader's entries expire, the envelopes are outdated).
    """
    domain = bench.domain_of[bench.work_users[0]]
    users = [u for u in bench.work_users if bench.domain_of[u] == domain]
    users = users[: scaled(benchmark, 200, 10)]
    bench.flush_valkey()
    bench.run(warm_valkey(bench, users, NAMES))
    clock = FakeClock()  # moves only in setup: nothing expires during a round
    reader = bench.cache(timer=clock)
    writer = reader if same_process else bench.cache(local_maxsize=0)
    repo, admin = bench.repo(reader), bench.repo(writer)
    key = AppConfigFragmentKey(scope_type=AppConfigScopeType.DOMAIN, scope_id=domain, name=NAMES[0])
    revisions = iter(range(10**6))

    async def read_all() -> None:
        for uid in users:
            await repo.app_configs(uid, NAMES)
        await reader.drain()

    def setup() -> None:
        async def change() -> None:
            config = {**domain_config(NAMES[0], domain), "rev": next(revisions)}
            result = await admin.admin_bulk_update([FragmentInput(key=key, config=config)])
            assert not result.failures, result.failures

        bench.run(change())
        if not same_process:  # the reader sees it once its readings are local_ttl old (I4)
            clock.advance(reader.local_ttl + 1)

    bench.run(read_all())  # L1 and the user domains of the reader
    measure(
        benchmark, bench, "ablation.shared_write", read_all,
        ops=len(users), rounds=scaled(benchmark, 10, 1), setup=setup,
    )  # fmt: skip
    stats = benchmark.extra_info["stats"] = reader.stats.as_dict()
    mechanism, counter = (
        ("l1_recompose", "l1_recomposed") if same_process else ("envelope_recompose", "recomposed")
    )
    off = mechanism in os.environ.get("APPCONFIG_CACHE_ABLATE", "")
    assert (stats[counter] == 0) if off else (stats[counter] > 0), stats


@pytest.mark.benchmark(group="ablation: shared write, same process")
@pytest.mark.parametrize("ablate", _sides("l1_recompose"), indirect=True)
def test_shared_write_same_process(benchmark, bench: BenchSession, ablate: str) -> None:
    _shared_write(benchmark, bench, same_process=True)


@pytest.mark.benchmark(group="ablation: shared write, another process")
@pytest.mark.parametrize("ablate", _sides("envelope_recompose"), indirect=True)
def test_shared_write_another_process(benchmark, bench: BenchSession, ablate: str) -> None:
    _shared_write(benchmark, bench, same_process=False)
