"""The host's memory: /proc/meminfo, PSI and KSM read from a host rooted anywhere.

Every file is untrusted: each wrong shape is one HostReadError naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from balloonctl.config import Inventory
from balloonctl.errors import BalloonError, HostReadError
from balloonctl.host import (
    KSM_DIR,
    MEMINFO,
    PAGE_SIZE,
    PSI_MEMORY,
    HostMemory,
    Ksm,
    Psi,
    describe_host,
    host_files,
    host_root_for,
    parse_ksm,
    parse_meminfo,
    parse_psi,
    read_host,
    read_meminfo,
)
from balloonctl.units import GiB, KiB, MiB

# The first lines of a real 6.1 kernel's /proc/meminfo, as it prints them.
MEMINFO_TEXT = """\
MemTotal:       16318300 kB
MemFree:         1210412 kB
MemAvailable:    9861012 kB
Buffers:          402860 kB
Cached:          8105340 kB
SwapCached:         1024 kB
Active(anon):    3922096 kB
AnonPages:       4200444 kB
SwapTotal:       2097148 kB
SwapFree:        2000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
DirectMap1G:     2097152 kB
"""

PSI_TEXT = ("some avg10=1.50 avg60=0.75 avg300=0.20 total=123456\n"
            "full avg10=0.40 avg60=0.10 avg300=0.00 total=2345\n")


def write_host(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def ksm_files(run: str = "1", shared: str = "100", sharing: str = "250") -> dict[str, str | bytes]:
    return {f"{KSM_DIR}/run": run + "\n", f"{KSM_DIR}/pages_shared": shared + "\n",
            f"{KSM_DIR}/pages_sharing": sharing + "\n"}


# --- this machine ---------------------------------------------------------------------------


def test_this_machines_host_reads_positive_consistent_figures() -> None:
    host = read_host()
    assert host.source == "/proc"
    # MemTotal is the kernel's totalram_pages, which sysinfo(2) reports too
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert abs(host.total - phys) < MiB
    assert 0 < host.free <= host.total
    assert 0 < host.available <= host.total
    assert host.free <= host.available + host.cached + MiB  # free memory counts as available
    assert 0 <= host.cached <= host.total and 0 < host.anon <= host.total
    assert 0 <= host.swap_free <= host.swap_total
    assert (host.psi is not None) == Path("/proc/pressure/memory").exists()
    assert (host.ksm is not None) == Path("/sys/kernel/mm/ksm/run").exists()
    if host.psi is not None:
        assert 0.0 <= host.psi.some_avg10 <= 100.0 and host.psi.full_avg10 <= 100.0
    if host.ksm is not None:
        assert host.ksm.saved == host.ksm.pages_sharing * PAGE_SIZE


# --- meminfo --------------------------------------------------------------------------------


def test_meminfo_values_are_kib_turned_into_bytes() -> None:
    host = parse_meminfo(MEMINFO_TEXT)
    assert host.total == 16318300 * KiB
    assert (host.free, host.available, host.cached) == (
        1210412 * KiB, 9861012 * KiB, 8105340 * KiB)
    assert (host.anon, host.swap_total, host.swap_free) == (
        4200444 * KiB, 2097148 * KiB, 2000000 * KiB)
    assert host.psi is None and host.ksm is None
    assert host.used == host.total - host.available


def test_a_kernel_without_memavailable_counts_free_and_cache_at_most_the_ram() -> None:
    host = parse_meminfo("MemTotal: 1000 kB\nMemFree: 200 kB\nCached: 300 kB\n")
    assert host.available == 500 * KiB
    assert (host.anon, host.swap_total, host.swap_free) == (0, 0, 0)
    # free + cached can never be more available memory than the RAM
    host = parse_meminfo("MemTotal: 1000 kB\nMemFree: 700 kB\nCached: 301 kB\n")
    assert host.available == 1000 * KiB


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no MemTotal line"),
        ("MemFree: 10 kB\nMemAvailable: 10 kB\n", "no MemTotal line"),
        ("MemTotal: 100 kB\n", "no MemFree line"),
        ("MemTotal: lots kB\nMemFree: 1 kB\n", "MemTotal is not a number: 'lots'"),
        ("MemTotal: 100 kB\nMemFree: -5 kB\n", "MemFree is negative (-5 kB)"),
        ("MemTotal: 1.5 kB\nMemFree: 1 kB\n", "MemTotal is not a number"),
        ("MemTotal: 100\nMemFree: 1 kB\n", "MemTotal must be in kB, not ''"),
        ("MemTotal: 100 MB\nMemFree: 1 kB\n", "MemTotal must be in kB, not 'MB'"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\nthis is not meminfo\n",
         "line 3 is not 'Name: value [kB]': 'this is not meminfo'"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\nCached: 1 kB extra\n", "line 3 is not"),
        ("MemTotal: 100 kB\nMemTotal: 200 kB\nMemFree: 1 kB\n", "MemTotal appears twice"),
        ("MemTotal: 0 kB\nMemFree: 0 kB\n", "MemTotal is 0"),
        ("MemTotal: 100 kB\nMemFree: 101 kB\n", "MemFree (101 kB) exceeds MemTotal (100 kB)"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\nMemAvailable: 101 kB\n", "MemAvailable (101 kB)"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\nAnonPages: 101 kB\n", "AnonPages (101 kB)"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\nSwapTotal: 5 kB\nSwapFree: 6 kB\n",
         "SwapFree exceeds SwapTotal"),
        (f"MemTotal: {2**63} kB\nMemFree: 1 kB\n", "MemTotal is implausibly large"),
        ("MemTotal: 100 kB\nMemFree: 1 kB\n\x1b[2Jevil\n", r"'\x1b[2Jevil'"),
    ],
)
def test_every_malformed_meminfo_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(HostReadError) as caught:
        parse_meminfo(text, source="/x/proc/meminfo")
    assert caught.value.path == "/x/proc/meminfo"
    assert str(caught.value).startswith("/x/proc/meminfo: ")
    assert message in str(caught.value)
    assert "\x1b" not in str(caught.value)  # control characters from the file are escaped


def test_memfree_equal_to_memtotal_is_accepted() -> None:  # the edge, one step inside
    host = parse_meminfo("MemTotal: 100 kB\nMemFree: 100 kB\nMemAvailable: 100 kB\n")
    assert host.free == host.total == host.available == 100 * KiB


# --- PSI and KSM ----------------------------------------------------------------------------


def test_psi_lines_are_parsed() -> None:
    psi = parse_psi(PSI_TEXT)
    assert psi == Psi(1.5, 0.75, 0.2, 0.4, 0.1, 0.0, some_total=123456, full_total=2345)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'some' line"),
        ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "no 'full' line"),
        (PSI_TEXT + "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "two 'some' lines"),
        ("some avg10=0.00 avg300=0.00 total=0\n" + PSI_TEXT.splitlines()[1], "some: no avg60"),
        (PSI_TEXT.replace("avg10=1.50", "avg10=100.01"), "avg10='100.01' is not a percentage"),
        (PSI_TEXT.replace("avg10=1.50", "avg10=nan"), "avg10='nan' is not a percentage"),
        (PSI_TEXT.replace("avg10=1.50", "avg10=-1"), "avg10='-1' is not a percentage"),
        (PSI_TEXT.replace("total=2345", "total=-3"), "full: total='-3' is not a number"),
        (PSI_TEXT.replace("avg60=0.75", "avg60"), "some: 'avg60' is not name=value"),
        (PSI_TEXT + "partial avg10=0.00\n", "line 3 is neither 'some' nor 'full'"),
    ],
)
def test_every_malformed_psi_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(HostReadError, match=r"^/p: ") as caught:
        parse_psi(text, source="/p")
    assert message in str(caught.value)


def test_psi_at_exactly_100_percent_is_accepted() -> None:
    psi = parse_psi(PSI_TEXT.replace("avg10=1.50", "avg10=100.00"))
    assert psi.some_avg10 == 100.0


def test_ksm_files_are_parsed_and_only_run_1_is_running() -> None:
    ksm = parse_ksm("1\n", "100\n", "250\n", page_size=4096)
    assert ksm == Ksm(run=True, pages_shared=100, pages_sharing=250, page_size=4096)
    assert ksm.saved == 250 * 4096
    assert not parse_ksm("0\n", "100\n", "250\n").run  # stopped, merged pages kept
    assert not parse_ksm("2\n", "0\n", "0\n").run  # unmerging


@pytest.mark.parametrize(
    ("run", "shared", "sharing", "message"),
    [
        ("3", "0", "0", "/k/run: run is '3', not 0, 1 or 2"),
        ("", "0", "0", "/k/run: run is ''"),
        ("1", "-1", "0", "/k/pages_shared: pages_shared is not a page count: '-1'"),
        ("1", "0", "many", "/k/pages_sharing: pages_sharing is not a page count: 'many'"),
        ("1", "0", "9" * 20, "/k/pages_sharing: pages_sharing is not a page count"),
    ],
)
def test_every_malformed_ksm_file_is_one_clear_error(
    run: str, shared: str, sharing: str, message: str
) -> None:
    with pytest.raises(HostReadError) as caught:
        parse_ksm(run, shared, sharing, source="/k")
    assert str(caught.value).startswith(message)


# --- reading a host rooted anywhere ---------------------------------------------------------


def test_a_simulated_host_directory_is_read_like_the_root(tmp_path: Path) -> None:
    root = write_host(tmp_path, {MEMINFO: MEMINFO_TEXT, PSI_MEMORY: PSI_TEXT, **ksm_files()})
    host = read_host(root)
    assert host.source == str(root)
    assert host.total == 16318300 * KiB
    assert host.psi == parse_psi(PSI_TEXT)
    assert host.ksm == Ksm(run=True, pages_shared=100, pages_sharing=250, page_size=PAGE_SIZE)
    assert read_host(str(root)) == host  # a str root too


def test_no_psi_file_and_no_ksm_directory_mean_none(tmp_path: Path) -> None:
    host = read_host(write_host(tmp_path, {MEMINFO: MEMINFO_TEXT}))
    assert host.psi is None and host.ksm is None


def test_what_host_files_writes_reads_back_as_the_same_host(tmp_path: Path) -> None:
    host = HostMemory(total=8 * GiB, available=3 * GiB, free=GiB, cached=2 * GiB,
                      anon=4 * GiB, swap_total=GiB, swap_free=512 * MiB,
                      psi=Psi(12.5, 6.25, 1.0, 3.0, 1.5, 0.25, some_total=99, full_total=7),
                      ksm=Ksm(run=True, pages_shared=10, pages_sharing=300,
                              page_size=PAGE_SIZE),
                      source=str(tmp_path))
    root = write_host(tmp_path, dict(host_files(host)))
    assert read_host(root) == host
    stopped = HostMemory(total=GiB, available=GiB, free=GiB, cached=0, anon=0, swap_total=0,
                         swap_free=0, ksm=Ksm(False, 0, 0, PAGE_SIZE),
                         source=str(tmp_path / "b"))
    assert read_host(write_host(tmp_path / "b", dict(host_files(stopped)))) == stopped


def _fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def _loop(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(path.name)  # a symlink to itself: opening it fails with ELOOP


@pytest.mark.parametrize(
    ("shape", "rel", "message"),
    [
        ("missing", MEMINFO, "no such file"),
        ("dir", MEMINFO, "is a directory, not a file"),
        ("fifo", MEMINFO, "is not a regular file"),  # and it does not hang the reader
        ("loop", MEMINFO, "cannot read: Too many levels of symbolic links"),
        ("binary", MEMINFO, "is not ASCII text"),
        ("nul", MEMINFO, "contains NUL bytes"),
        ("huge", MEMINFO, "larger than 64 KiB"),
        ("garbage", MEMINFO, "line 1 is not 'Name: value [kB]': 'garbage garbage'"),
        ("dir", PSI_MEMORY, "is a directory, not a file"),
        ("garbage", PSI_MEMORY, "line 1 is neither 'some' nor 'full'"),
        ("fifo", f"{KSM_DIR}/run", "is not a regular file"),
        ("missing", f"{KSM_DIR}/pages_sharing", "no such file"),
        ("garbage", f"{KSM_DIR}/pages_shared", "pages_shared is not a page count"),
    ],
)
def test_every_wrong_file_shape_is_one_clear_error_naming_the_file(
    tmp_path: Path, shape: str, rel: str, message: str
) -> None:
    files: dict[str, str | bytes] = {MEMINFO: MEMINFO_TEXT, PSI_MEMORY: PSI_TEXT, **ksm_files()}
    files.pop(rel)
    root = write_host(tmp_path, files)
    path = root / rel
    if shape == "dir":
        path.mkdir(parents=True)
    elif shape == "fifo":
        _fifo(path)
    elif shape == "loop":
        _loop(path)
    elif shape != "missing":
        content = {"binary": b"MemTotal: \xff\xfe kB\n", "nul": b"MemTotal:\0 1 kB\n",
                   "huge": b"X: 1 kB\n" * 10_000, "garbage": b"garbage garbage\n"}[shape]
        write_host(root, {rel: content})
    with pytest.raises(HostReadError) as caught:
        read_host(root)
    assert isinstance(caught.value, BalloonError)
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_a_file_of_exactly_64_kib_is_still_read(tmp_path: Path) -> None:
    body = MEMINFO_TEXT.encode()
    padding = b"X: 1 kB\n"
    text = body + padding * ((64 * KiB - len(body)) // len(padding))
    text += b" " * (64 * KiB - len(text) - 1) + b"\n"
    assert len(text) == 64 * KiB
    (tmp_path / "meminfo").write_bytes(text)
    assert read_meminfo(tmp_path / "meminfo").total == 16318300 * KiB


def test_read_meminfo_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO_TEXT)
    host = read_meminfo(path)
    assert host.source == str(path) and host.total == 16318300 * KiB
    with pytest.raises(HostReadError, match=rf"^{tmp_path}/nope: no such file$"):
        read_meminfo(tmp_path / "nope")


# --- the host of a fleet --------------------------------------------------------------------


def test_a_socket_directory_with_a_simulated_host_names_it_as_the_host_root(
    tmp_path: Path,
) -> None:
    assert host_root_for(tmp_path) == Path("/")
    assert host_root_for(None) == Path("/")
    (tmp_path / "host" / "proc").mkdir(parents=True)
    assert host_root_for(tmp_path) == Path("/")  # no meminfo yet: not a host
    write_host(tmp_path / "host", {MEMINFO: MEMINFO_TEXT})
    assert host_root_for(tmp_path) == tmp_path / "host"
    assert host_root_for(str(tmp_path)) == tmp_path / "host"
    env = {"BALLOONCTL_WELLKNOWN": "", "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")}
    assert Inventory.load(directory=str(tmp_path), env=env).host_root == tmp_path / "host"
    assert Inventory.load(env={**env, "BALLOONCTL_DIR": str(tmp_path)}).host_root == (
        tmp_path / "host")
    other = tmp_path / "other"
    other.mkdir()
    assert Inventory.load(directory=str(other), env=env).host_root == Path("/")
    assert Inventory.load(env=env).host_root == Path("/")


# --- the summary line -----------------------------------------------------------------------


def _host(**kw: object) -> HostMemory:
    base: dict[str, object] = dict(total=8 * GiB, available=2 * GiB, free=GiB, cached=GiB,
                                   anon=5 * GiB, swap_total=0, swap_free=0)
    return HostMemory(**{**base, **kw})  # type: ignore[arg-type]


def test_describe_host_says_ram_available_overcommit_ksm_and_psi() -> None:
    host = _host(psi=Psi(4.2, 1.0, 0.5, 1.1, 0.2, 0.0),
                 ksm=Ksm(run=True, pages_shared=10, pages_sharing=76800, page_size=4096))
    assert describe_host(host, 12 * GiB) == (
        "host 8 GiB, available 2 GiB (25 %), guests 12 GiB (1.50x), KSM saved 300 MiB, "
        "PSI some 4.20 % full 1.10 % (avg10)")


def test_describe_host_without_psi_or_ksm_and_with_ksm_stopped() -> None:
    assert describe_host(_host(), 4 * GiB) == (
        "host 8 GiB, available 2 GiB (25 %), guests 4 GiB (0.50x), KSM -, PSI -")
    off = _host(ksm=Ksm(run=False, pages_shared=0, pages_sharing=0))
    assert ", KSM off, " in describe_host(off, 0)
    kept = _host(ksm=Ksm(run=False, pages_shared=1, pages_sharing=256, page_size=4096))
    assert ", KSM saved 1 MiB (stopped), " in describe_host(kept, 0)
