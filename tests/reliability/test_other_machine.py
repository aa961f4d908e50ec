"""A reader on another machine against maintenance: two homes attached to one file:// store (the
NAS shared by two laptops), the second restoring while the first runs forget + prune.

The readers' lock of the first home does not reach the second; what covers it is that prune
deletes nothing until it has been unreferenced for `[maintenance] delete_after`. The overlap is
made certain with real signals: the second home's restore is stopped (SIGSTOP) once it has read
its catalog, the first home forgets and prunes the very snapshot it restores, and the restore is
continued (SIGCONT). A reader that outlasts the grace period, or reads a catalog older than the
store's, fails with one line that says so, and records no damage.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.helpers import Run, describe, dg, dg_started, one_error
from tests.reliability.conftest import Figures
from tests.reliability.test_readers_vs_prune import (  # noqa: F401 (fixtures)
    forget_all_but_the_last,
    home_copy,
    stop_when,
    two_nights,
)
from tests.test_maintenance import (
    assert_clean,
    ok,
    query,
    referenced,
    set_delete_after,
    store_objects,
    waiting,
)

GRACE = 2.0  # seconds: `delete_after` in these tests


def second_home(first: Path, where: Path) -> Path:
    """A home on "another machine": attached to the first home's store, sharing nothing else."""
    attached = dg(where, "attach", "--store", f"file://{first / 'store'}")
    assert attached.code == 0, attached.err
    return where


def restore_stopped(home: Path, snapshot: int, target: Path):  # type: ignore[no-untyped-def]
    """A restore of `snapshot` in `home`, stopped once its catalog is read and its work begun."""
    proc = dg_started(home, "--json", "restore", "--snapshot", str(snapshot), target)
    stop_when(proc, home, lambda: any(target.glob("**/.deltagrid-restore-*")))
    return proc


def no_damage_recorded(home: Path) -> None:
    assert query(home, "SELECT count(*) FROM damaged_blobs") == [(0,)]


def pruned_message(run: Run, *fragments: str) -> None:
    """The restore failed with the one line that names a prune, not a missing object."""
    line = one_error(run, 1, "the store was pruned", *fragments)
    assert "is missing" not in line


def test_restore_on_another_machine_completes_across_forget_and_prune(
    home_copy: tuple[Path, Path, dict],  # noqa: F811
    tmp_path: Path,
    figures: Figures,
) -> None:
    first, src, expected = home_copy
    set_delete_after(first, f"{GRACE:g}s")
    second = second_home(first, tmp_path / "second")
    target = tmp_path / "restored"
    restore = restore_stopped(second, 1, target)
    before = forget_all_but_the_last(first)
    pruned = ok(first, "prune")  # the first home's readers' lock knows nothing of the second
    assert pruned["packs_deleted"] > 0 and pruned["objects_deleted"] == 0
    assert pruned["objects_waiting"] >= pruned["packs_deleted"]
    assert store_objects(first / "store") >= before  # snapshot 1's packs wait out the grace
    restore.send_signal(signal.SIGCONT)
    out, err = restore.communicate(timeout=120)
    assert restore.returncode == 0, err
    assert json.loads(out)["snapshot_id"] == 1
    assert describe(target / src.relative_to("/")) == expected

    time.sleep(GRACE + 0.2)  # the grace period is over: the next prune deletes them
    later = ok(first, "prune")
    assert later["objects_deleted"] >= pruned["objects_waiting"] and later["objects_waiting"] == 0
    assert waiting(first) == set() and store_objects(first / "store") == referenced(first)
    assert len(store_objects(first / "store")) < len(before)
    assert_clean(first)

    # The second home's catalog is older than the store's now: told so, not "object missing".
    again = dg(second, "restore", "--snapshot", "1", tmp_path / "again")
    pruned_message(again, "older than the store's", "deltagrid attach")
    no_damage_recorded(second)
    assert dg(second, "attach").code == 0  # as the message says: the store's catalog, then ...
    latest = dg(second, "--json", "restore", "--snapshot", "2", tmp_path / "latest")
    assert latest.code == 0, latest.err
    assert describe(tmp_path / "latest" / src.relative_to("/")) == describe(src)
    figures.count("readers vs maintenance", "restores on another machine during forget + prune")


def test_a_restore_that_outlasts_the_grace_period_says_the_store_was_pruned(
    home_copy: tuple[Path, Path, dict],  # noqa: F811
    tmp_path: Path,
    figures: Figures,
) -> None:
    first, _src, _expected = home_copy
    set_delete_after(first, f"{GRACE:g}s")
    second = second_home(first, tmp_path / "second")
    forget_all_but_the_last(first)
    assert ok(first, "prune")["objects_waiting"] > 0
    time.sleep(GRACE + 0.2)
    restore = restore_stopped(second, 1, tmp_path / "restored")  # its catalog predates forget
    assert ok(first, "prune")["objects_deleted"] > 0  # while it is stopped
    restore.send_signal(signal.SIGCONT)
    out, err = restore.communicate(timeout=120)
    pruned_message(Run(restore.returncode, out, err), "while this restore ran", "attach")
    no_damage_recorded(second)
    figures.count("readers vs maintenance", "restores that outlasted delete_after, told so")


def test_prune_delete_now_deletes_at_once(
    home_copy: tuple[Path, Path, dict],  # noqa: F811
    tmp_path: Path,
) -> None:
    first, _src, _expected = home_copy  # delete_after: the default, a day
    second = second_home(first, tmp_path / "second")
    before = forget_all_but_the_last(first)
    deferred = ok(first, "prune")
    assert deferred["objects_deleted"] == 0 and deferred["objects_waiting"] > 0
    assert ok(first, "prune")["objects_deleted"] == 0  # a day has not passed
    now = ok(first, "prune", "--delete-now")
    assert now["objects_deleted"] >= deferred["objects_waiting"] and now["objects_waiting"] == 0
    assert waiting(first) == set() and store_objects(first / "store") == referenced(first)
    assert len(store_objects(first / "store")) < len(before)
    assert_clean(first)
    verified = dg(second, "verify")  # the second home's catalog names what is gone now
    pruned_message(verified, "older than the store's", "then the verify again")
    no_damage_recorded(second)
