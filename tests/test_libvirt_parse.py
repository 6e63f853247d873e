"""Everything libvirt hands back, parsed in one place: domain XML, memory stats, errors.

No daemon needed: the inputs are what libvirt 9 returns (copied from a real domain) and
broken variants of it. The error numbers are checked against the installed binding.
"""

from __future__ import annotations

import pytest

from balloonctl.cli.exitcodes import ExitCode, exit_code_for
from balloonctl.errors import (
    AgentError,
    DomainNotRunning,
    LibvirtDenied,
    LibvirtUnavailable,
    NoBalloonDevice,
    QMPCommandError,
    QMPTimeout,
)
from balloonctl.libvirt import parse
from balloonctl.libvirt.parse import (
    LibvirtFailure,
    parse_domain_xml,
    parse_memory_stats,
    translate,
)

MiB = 1024 * 1024

DOMAIN = """<domain type='qemu' id='1'>
  <name>web1</name>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>716800</currentMemory>
  <devices>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-1-web1/qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
    <memballoon model='virtio' autodeflate='on' freePageReporting='off'>
      <stats period='2'/>
      <alias name='balloon0'/>
    </memballoon>
  </devices>
</domain>"""

# virsh dommemstat / virDomainMemoryStats of a 1 GiB guest at 700 MiB (KiB, faults counts)
STATS = {"actual": 716800, "swap_in": 4, "swap_out": 8, "major_fault": 12,
         "minor_fault": 1521, "unused": 949488, "available": 996732, "usable": 882724,
         "last_update": 1796041869, "disk_caches": 8620, "hugetlb_pgalloc": 0,
         "hugetlb_pgfail": 0, "rss": 251360}


def with_balloon(balloon: str) -> str:
    start, end = DOMAIN.index("<memballoon"), DOMAIN.index("</memballoon>") + 13
    return DOMAIN[:start] + balloon + DOMAIN[end:]


# ---- domain XML ----------------------------------------------------------------------------


def test_a_real_domain_xml() -> None:
    xml = parse_domain_xml(DOMAIN)
    assert xml.max_memory == 1024 * MiB
    assert xml.current_memory == 700 * MiB
    assert (xml.balloon_model, xml.autodeflate, xml.free_page_reporting) == ("virtio", True,
                                                                               False)
    assert xml.stats_period == 2 and xml.has_balloon and xml.qga_channel


@pytest.mark.parametrize(("memory", "expected"), [
    ("<memory unit='MiB'>512</memory>", 512 * MiB),
    ("<memory unit='GiB'>2</memory>", 2048 * MiB),
    ("<memory unit='b'>1073741824</memory>", 1024 * MiB),
    ("<memory>1024</memory>", 1024 * 1024),  # libvirt's default unit is KiB
    ("<memory unit='MB'>1</memory>", 1000 * 1000),
])
def test_memory_units(memory: str, expected: int) -> None:
    text = DOMAIN.replace("<memory unit='KiB'>1048576</memory>", memory)
    assert parse_domain_xml(text).max_memory == expected


def test_no_memballoon_element_and_a_disabled_one_mean_no_balloon() -> None:
    absent = parse_domain_xml(with_balloon(""))
    assert absent.balloon_model is None and not absent.has_balloon
    assert absent.stats_period == 0 and absent.autodeflate is None
    off = parse_domain_xml(with_balloon("<memballoon model='none'/>"))
    assert off.balloon_model == "none" and not off.has_balloon


def test_balloon_without_stats_or_features() -> None:
    xml = parse_domain_xml(with_balloon("<memballoon model='virtio'/>"))
    assert xml.has_balloon and xml.stats_period == 0
    assert xml.autodeflate is None and xml.free_page_reporting is None


def test_no_guest_agent_channel() -> None:
    text = DOMAIN.replace("org.qemu.guest_agent.0", "org.example.other")
    assert not parse_domain_xml(text).qga_channel


@pytest.mark.parametrize(("text", "message"), [
    ("<domain", "not XML"),
    ("<network><name>x</name></network>", "root element is <network>"),
    (DOMAIN.replace("<memory unit='KiB'>1048576</memory>", ""), "no positive <memory>"),
    (DOMAIN.replace("1048576", "0"), "no positive <memory>"),
    (DOMAIN.replace("1048576", "1.5e6"), "<memory> is not a whole number"),
    (DOMAIN.replace("1048576", "-1"), "<memory> is not a whole number"),
    (DOMAIN.replace("1048576", "١٠٢٤"), "<memory> is not a whole number"),  # Arabic digits
    (DOMAIN.replace("unit='KiB'>1048576", "unit='pages'>1048576"), "unknown unit 'pages'"),
    (DOMAIN.replace("716800", "lots"), "<currentMemory> is not a whole number"),
    (with_balloon("<memballoon/>"), "<memballoon> has no model"),
    (with_balloon("<memballoon model='virtio' autodeflate='maybe'/>"), "autodeflate='maybe'"),
    (with_balloon("<memballoon model='virtio' freePageReporting=''/>"), "freePageReporting=''"),
    (with_balloon("<memballoon model='virtio'><stats period='often'/></memballoon>"),
     "period='often'"),
    (with_balloon("<memballoon model='virtio'><stats/></memballoon>"), "period=''"),
])
def test_malformed_domain_xml_is_named(text: str, message: str) -> None:
    with pytest.raises(QMPCommandError, match="bad domain XML from libvirt") as err:
        parse_domain_xml(text, vm="web1")
    assert message in str(err.value)
    assert err.value.vm == "web1" and err.value.received == text
    assert exit_code_for(err.value) is ExitCode.QMP_ERROR


@pytest.mark.parametrize("value", [None, b"<domain/>", 42])
def test_domain_xml_that_is_not_text(value: object) -> None:
    with pytest.raises(QMPCommandError, match="expected XML text"):
        parse_domain_xml(value)


# ---- memory stats -------------------------------------------------------------------------


def test_real_memory_stats_in_bytes() -> None:
    actual, stats = parse_memory_stats(STATS)
    assert actual == 700 * MiB
    # libvirt's names: unused = stat-free-memory, available = stat-total-memory,
    # usable = stat-available-memory; all in KiB, faults are counts
    assert stats.free_memory == 949488 * 1024
    assert stats.total_memory == 996732 * 1024
    assert stats.available_memory == 882724 * 1024
    assert stats.disk_caches == 8620 * 1024
    assert (stats.swap_in, stats.swap_out) == (4 * 1024, 8 * 1024)
    assert (stats.major_faults, stats.minor_faults) == (12, 1521)
    assert (stats.htlb_pgalloc, stats.htlb_pgfail) == (0, 0)
    assert stats.last_update == 1796041869 and stats.reported
    assert dict(stats.extra) == {}  # rss, actual and last_update are not guest stats


def test_a_guest_without_its_driver_reports_only_actual() -> None:
    actual, stats = parse_memory_stats({"actual": 1048576, "rss": 100})
    assert actual == 1024 * MiB
    assert not stats.reported and stats.free_memory is None and stats.disk_caches is None


def test_unknown_stats_are_kept_as_they_are() -> None:
    _, stats = parse_memory_stats({**STATS, "future_stat": 7})
    assert dict(stats.extra) == {"future_stat": 7}


@pytest.mark.parametrize(("raw", "message"), [
    ([("actual", 1)], "expected a dict, got list"),
    (None, "expected a dict, got NoneType"),
    ({"unused": 5}, "no 'actual'"),
    ({**STATS, "unused": "949488"}, "stat 'unused' is '949488'"),
    ({**STATS, "actual": True}, "stat 'actual' is True"),
    ({**STATS, "disk_caches": -1}, "stat 'disk_caches' is -1"),
    ({**STATS, "usable": 1.5}, "stat 'usable' is 1.5"),
    ({**STATS, 7: 1}, "stat name 7 is not a string"),
])
def test_malformed_memory_stats_are_named(raw: object, message: str) -> None:
    with pytest.raises(QMPCommandError, match="bad memory stats from libvirt") as err:
        parse_memory_stats(raw, vm="web1")
    assert message in str(err.value) and err.value.vm == "web1"


# ---- errors -------------------------------------------------------------------------------


def test_error_numbers_are_libvirts() -> None:
    import libvirt

    for name in ("INTERNAL_ERROR", "NO_SUPPORT", "NO_CONNECT", "INVALID_ARG",
                 "OPERATION_FAILED", "SYSTEM_ERROR", "RPC", "NO_DOMAIN", "AUTH_FAILED",
                 "OPERATION_INVALID", "OPERATION_TIMEOUT", "AGENT_UNRESPONSIVE",
                 "ACCESS_DENIED", "AUTH_UNAVAILABLE", "AGENT_UNSYNCED"):
        assert getattr(parse, f"ERR_{name}") == getattr(libvirt, f"VIR_ERR_{name}"), name


def failure(code: int, message: str, op: str = "memoryStats") -> LibvirtFailure:
    return LibvirtFailure(code=code, message=message, op=op, uri="qemu:///system",
                          domain="web1")


def test_libvirtd_not_running() -> None:
    err = translate(failure(parse.ERR_SYSTEM_ERROR, "Failed to connect socket to "
                            "'/var/run/libvirt/libvirt-sock': No such file or directory",
                            op="open"))
    assert isinstance(err, LibvirtUnavailable)
    assert str(err).startswith("cannot open libvirt connection qemu:///system: Failed")
    assert "is libvirtd running?" in str(err)
    assert exit_code_for(err) is ExitCode.UNREACHABLE


@pytest.mark.parametrize(("code", "message"), [
    (parse.ERR_SYSTEM_ERROR, "Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
                             "Permission denied"),
    (parse.ERR_AUTH_FAILED, "authentication failed: polkit: access denied"),
    (parse.ERR_ACCESS_DENIED, "access denied: 'connect_getcapabilities'"),
])
def test_permission_denied_on_the_uri(code: int, message: str) -> None:
    err = translate(failure(code, message, op="open"), vm="web1")
    assert isinstance(err, LibvirtDenied)
    assert str(err).startswith("web1: libvirt refuses access to qemu:///system")
    assert exit_code_for(err) is ExitCode.UNREACHABLE


@pytest.mark.parametrize(("code", "message"), [
    (parse.ERR_NO_DOMAIN, "Domain not found: no domain with matching name 'web1'"),
    (parse.ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running"),
])
def test_domain_gone_or_stopped(code: int, message: str) -> None:
    err = translate(failure(code, message))
    assert isinstance(err, DomainNotRunning)
    assert str(err).startswith("domain 'web1' is not running at qemu:///system")
    assert exit_code_for(err) is ExitCode.UNREACHABLE


def test_an_invalid_operation_on_a_running_domain_is_not_a_stop() -> None:
    err = translate(failure(parse.ERR_OPERATION_INVALID, "Requested operation is not valid: "
                            "cannot set memory higher than max memory", op="setMemoryFlags"))
    assert type(err) is QMPCommandError and err.error_class == "libvirt:55"
    assert "setMemoryFlags" in str(err)


@pytest.mark.parametrize(("code", "message"), [
    (parse.ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding: QEMU guest agent is not "
                                   "connected"),
    (parse.ERR_AGENT_UNSYNCED, "QEMU guest agent is not available due to an error"),
])
def test_guest_agent_not_responding(code: int, message: str) -> None:
    err = translate(failure(code, message, op="qemuAgentCommand"))
    assert type(err) is AgentError and "not responding through libvirt" in str(err)
    assert exit_code_for(err) is ExitCode.QMP_ERROR


def test_lost_daemon_timeout_and_missing_balloon() -> None:
    lost = translate(failure(parse.ERR_SYSTEM_ERROR, "Cannot recv data: End of file while "
                             "reading data: Input/output error"))
    assert isinstance(lost, LibvirtUnavailable) and "lost the libvirt connection" in str(lost)
    slow = translate(failure(parse.ERR_OPERATION_TIMEOUT, "Timed out during operation"))
    assert isinstance(slow, QMPTimeout) and exit_code_for(slow) is ExitCode.TIMEOUT
    nob = translate(failure(parse.ERR_OPERATION_INVALID, "Unable to change memory of active "
                            "domain without the balloon device and guest OS balloon driver",
                            op="setMemoryFlags"))
    assert isinstance(nob, NoBalloonDevice) and exit_code_for(nob) is ExitCode.QMP_ERROR


def test_only_the_first_line_of_a_message() -> None:
    err = translate(failure(parse.ERR_INTERNAL_ERROR, "line one\nline two"))
    assert "line one" in str(err) and "line two" not in str(err)
