"""Testing hooks that make a worker die or wait at a named point, so tests can show what a rerun,
or a cluster's retry, redoes. Unset, they do nothing.

- ``LONGFORGE_KILL_AT=<kind>:<step>:<task>`` (``global:3:0`` for a driver step): SIGKILL this
  process right after that piece of work is finished (:func:`fault_point`);
- ``LONGFORGE_PAUSE_AT=<where>``: wait there (at most 10 minutes) for the signal a test sends, so
  a Ctrl-C lands mid-run however loaded the machine is;
- ``LONGFORGE_KILL_ONCE=<where>`` with ``LONGFORGE_KILL_ONCE_FLAG=<file>``: SIGKILL the first
  process that reaches ``<where>`` *in the middle* of a task (:func:`mid_task`: ``batch:<stage>:<k>``
  after a model stage's batch ``k`` is checkpointed, ``group:<stage>:<g>`` after group ``g`` of a
  partition is built), once: the flag file, made atomically, stops every later attempt. It is how a
  test kills a cluster worker mid-task and watches the cluster retry the task.
"""

from __future__ import annotations

import os
import signal
import time


def fault_point(where: str) -> None:
    if os.environ.get("LONGFORGE_KILL_AT") == where:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LONGFORGE_PAUSE_AT") == where:
        time.sleep(600)


def mid_task(where: str) -> None:
    if os.environ.get("LONGFORGE_KILL_ONCE") != where:
        return
    flag = os.environ.get("LONGFORGE_KILL_ONCE_FLAG")
    if not flag:
        return
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
