"""The CLI's principal: the operating-system account (from the kernel, not from $USER) and the
host, and when two operators may be one person."""

from __future__ import annotations

import os
import pwd
import socket

import pytest

from pipeline.auth import operator
from pipeline.auth.operator import Operator
from pipeline.auth.principal import DELEGATE, PrincipalKind


def test_current_reads_the_kernels_uid_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    me = operator.current()
    assert me.uid == os.geteuid()
    assert me.user == pwd.getpwuid(os.geteuid()).pw_name != "mallory"
    assert me.host == socket.gethostname()


def test_sudo_user_counts_only_for_root() -> None:
    me = operator.current(environ={"SUDO_USER": "dana"})
    assert me.sudo_user == ("dana" if os.geteuid() == 0 else None)
    assert Operator("jdoe", 1000, "build-1", sudo_user=None).person == "jdoe"
    assert Operator("root", 0, "build-1", sudo_user="dana").person == "dana"
    # a non-root account cannot borrow a name through SUDO_USER
    assert Operator("jdoe", 1000, "build-1", sudo_user="dana").person == "jdoe"


def test_the_operator_principal() -> None:
    op = Operator("jdoe", 1000, "build-1")
    p = op.principal()
    assert (p.kind, p.credential, p.reviewer, str(p)) == (
        PrincipalKind.OPERATOR, "os:jdoe@build-1", None, "os:jdoe@build-1")
    assert p.label == "jdoe@build-1" and p.allows(DELEGATE) and p.allows("admin")
    # `review decide --reviewer alice` at the CLI: the operator acts for alice, as a delegate
    as_alice = p.acting("alice")
    assert as_alice.delegate and str(as_alice) == "alice via os:jdoe@build-1 (delegate)"
    sudo = Operator("root", 0, "build-1", sudo_user="dana").principal()
    assert sudo.credential == "os:dana@build-1"
    assert sudo.label == "root@build-1 (sudo from dana)"


def test_odd_names_become_digests_without_colliding() -> None:
    a = Operator("jdö", 1000, "build-1").credential
    b = Operator("jdo", 1000, "build-1").credential
    c = Operator("jd_", 1000, "build-1").credential
    d = Operator("jdoe", 1000, "a host with spaces").credential
    assert len({a, b, c}) == 3 and a.startswith("os:x") and b == "os:jdo@build-1"
    assert d.startswith("os:jdoe@x")
    long_host = Operator("jdoe", 1000, "h" * 300).principal()  # still a valid principal
    assert len(long_host.credential) < 128


@pytest.mark.parametrize(("a", "b", "same"), [
    (Operator("jdoe", 1000, "build-1"), Operator("jdoe", 1000, "build-2"), True),
    (Operator("jdoe", 1000, "build-1"), Operator("JDoe", 1001, "laptop"), True),
    (Operator("jdoe", 1000, "build-1"), Operator("dana", 1001, "build-1"), False),
    (Operator("root", 0, "build-1"), Operator("dana", 1001, "build-2"), True),  # role account
    (Operator("postgres", 26, "db-1"), Operator("dana", 1001, "db-1"), True),
    (Operator("root", 0, "build-1", "jdoe"), Operator("dana", 1001, "build-1"), False),
    (Operator("root", 0, "build-1", "dana"), Operator("dana", 1001, "build-2"), True),
])
def test_when_two_operators_may_be_one_person(a: Operator, b: Operator, same: bool) -> None:
    assert a.same_person_as(b) is same and b.same_person_as(a) is same
