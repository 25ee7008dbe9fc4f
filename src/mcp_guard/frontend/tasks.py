"""The tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663), served by mcp-guard itself for any upstream.

A 2026-07-28 client that negotiated the extension (in its request's ``clientCapabilities.extensions``) and calls
a tool that may run as a task (:func:`task_support`: the upstream's ``tasks``/``task_tools`` config, else the
definition's ``execution.taskSupport``) gets a task handle instead of waiting: the call runs in the background
through the same pipeline as any call — policy, obligations and approvals, the audit rows, flows, the result
policy and redaction — and what the client would have been answered is kept on the task until it polls it with
``tasks/get``.

* **Denied at once.** The handle is answered only once the call's allow row is committed
  (``CallContext.admitted``); a call the pipeline refuses before that is answered as a plain call (the deny
  result), and no task exists.
* **Bound to its principal.** A task is found by (task id, principal id). Another principal's ``tasks/get``,
  ``tasks/update`` or ``tasks/cancel`` gets the same ``-32602`` as an unknown id: no existence oracle. Tasks key
  on the principal, never the MCP session: a stateless 2026-07-28 client has none, and a principal's client may
  poll from another connection.
* **Audited as one call.** The task's id is the call's ``call_id``, so its decision row and outcome row (or
  ``call.cancelled``) carry it in ``details.call_id``; polling is not audited (it reaches no upstream).
* **Bounded, in memory.** At most :data:`MAX_TASKS_PER_PRINCIPAL` per principal (a finished one is evicted,
  oldest first, to make room; with all of them running the call is refused); a finished task is kept
  :data:`TTL_S` and then forgotten. Tasks do not survive a restart and are not shared between replicas.
* **Cancellation** (``tasks/cancel``) cancels the call: the upstream request is abandoned, which makes the SDK send
  ``notifications/cancelled`` upstream, and the pipeline records ``call.cancelled``.

* **Input.** An upstream's question during a task's call (elicitation, sampling, roots — already scrubbed by the
  registry) is parked on the task: the task reports ``input_required`` with the question under a key of
  mcp-guard's (``elicitation-1``…) in ``inputRequests``; ``tasks/update`` delivers the client's answers, which
  go to the waiting upstream request as a handshake-era client's answer would (the connection validates them),
  once the policy, asked again with them (``input.input_responses``), allows; its deny ends the call.
  A question the creating request's capabilities cannot answer is refused at once; one unanswered for
  :data:`ANSWER_TIMEOUT_S` is answered with an error.

The removed v1 methods ``tasks/result`` and ``tasks/list`` are not served (``-32601``). Every upstream is called
synchronously: the extension is never declared to one (:func:`for_upstream`), so none hands back a task of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import anyio
import mcp_types as types
import structlog
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field, ValidationError

from mcp_guard.channel import REQUEST_TYPES, ClientMethod, missing_capability
from mcp_guard.pipeline.context import RedecideFn
from mcp_guard.settings import UpstreamSettings

__all__ = [
    "MAX_TASKS_PER_PRINCIPAL",
    "TASKS_EXTENSION",
    "TTL_S",
    "Task",
    "TaskChannel",
    "TaskEnd",
    "TaskParams",
    "TaskStatus",
    "TaskSupport",
    "TaskTable",
    "Tasks",
    "for_upstream",
    "missing_extension",
    "negotiated",
    "task_support",
]

log = structlog.get_logger("mcp_guard.frontend")

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
MAX_TASKS_PER_PRINCIPAL = 64
"""Tasks one principal may hold at once, running and finished (a finished one makes room for a new one)."""
TTL_S = 3600
"""How long a finished task stays readable (the ``ttlMs`` every task reports)."""
POLL_INTERVAL_MS = 500
"""The polling pace suggested to clients."""
ANSWER_TIMEOUT_S = 600.0
"""How long a task's question waits for ``tasks/update`` before the upstream gets an error instead."""
_KEY_PREFIX = {ClientMethod.ELICITATION: "elicitation", ClientMethod.SAMPLING: "sampling", ClientMethod.ROOTS: "roots"}
_CLIENT_CAPABILITIES_META_KEY = "io.modelcontextprotocol/clientCapabilities"


class TaskStatus(StrEnum):
    WORKING = "working"
    INPUT_REQUIRED = "input_required"  # reported, never stored: a working task with questions pending
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskSupport(StrEnum):
    """What a tool's definition says (``execution.taskSupport``); absent means forbidden."""

    FORBIDDEN = "forbidden"
    OPTIONAL = "optional"
    REQUIRED = "required"


class TaskParams(types.RequestParams):
    """``tasks/get`` / ``tasks/cancel`` / ``tasks/update`` params: the task's id, and an update's answers."""

    task_id: str = Field(alias="taskId")
    input_responses: dict[str, Any] | None = Field(default=None, alias="inputResponses")


@dataclass(eq=False)
class _Question:
    """An upstream's question parked on a task, until ``tasks/update`` answers it (or the task ends)."""

    method: ClientMethod
    params: dict[str, Any]
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: dict[str, Any] | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(eq=False)
class Task:
    """One task: who owns it, where it stands, and — once finished — the client's answer or the error."""

    id: str
    owner: str
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    status: TaskStatus = TaskStatus.WORKING
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    scope: anyio.CancelScope | None = None
    expires: float | None = None  # monotonic; set when it finishes
    caps: types.ClientCapabilities | None = None  # of the request that created it: what its client can answer
    questions: dict[str, _Question] = field(default_factory=dict)  # pending, by key
    asked: int = 0  # questions asked so far (their keys' numbers)
    redecide: RedecideFn | None = None  # the call's re-decision on answers, once it is admitted (tasks/update)

    @property
    def finished(self) -> bool:
        return self.status is not TaskStatus.WORKING

    @property
    def reported(self) -> TaskStatus:
        """The status a client is told: ``input_required`` while a working task waits for answers."""
        return TaskStatus.INPUT_REQUIRED if self.status is TaskStatus.WORKING and self.questions else self.status

    def envelope(self) -> dict[str, Any]:
        """The ``Task`` fields (a ``CreateTaskResult`` is this plus ``resultType: "task"``)."""
        return {
            "taskId": self.id,
            "status": str(self.reported),
            "createdAt": _iso(self.created),
            "lastUpdatedAt": _iso(self.updated),
            "ttlMs": TTL_S * 1000,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }

    def detailed(self) -> dict[str, Any]:
        """``tasks/get``'s answer: the envelope, with the result (completed) or the error (failed) inlined."""
        out = self.envelope()
        if self.reported is TaskStatus.INPUT_REQUIRED:
            out["inputRequests"] = {k: {"method": str(q.method), "params": q.params} for k, q in self.questions.items()}
        elif self.status is TaskStatus.COMPLETED and self.result is not None:
            out["result"] = self.result
        elif self.status is TaskStatus.FAILED and self.error is not None:
            out["error"] = self.error
        return out


class TaskTable:
    """The tasks of every principal, bounded per principal, finished ones forgotten after their TTL."""

    def __init__(
        self,
        max_per_principal: int = MAX_TASKS_PER_PRINCIPAL,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_principal = max_per_principal
        self._ttl = ttl_s
        self._clock = clock
        self._by_owner: dict[str, dict[str, Task]] = {}

    def create(self, task_id: str, owner: str) -> Task | None:
        """A new working task of ``owner``, or None when all of its ``max_per_principal`` tasks are running."""
        own = self._purged(owner)
        if len(own) >= self.max_per_principal:
            done = [t for t in own.values() if t.finished]
            if not done:
                return None
            del own[min(done, key=lambda t: t.updated).id]
        task = own[task_id] = Task(id=task_id, owner=owner)
        return task

    def find(self, task_id: str, owner: str) -> Task | None:
        """``owner``'s task ``task_id`` — None for an unknown, expired or someone else's task alike."""
        return self._purged(owner).get(task_id)

    def drop(self, task: Task) -> None:
        """Forget a task that was never answered to the client (its call was refused at once)."""
        self._by_owner.get(task.owner, {}).pop(task.id, None)

    def finish(
        self,
        task: Task,
        status: TaskStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Settle ``task`` once (a later settle — a cancel racing the end — changes nothing)."""
        if task.finished:
            return
        task.status, task.result, task.error = status, result, error
        task.updated = time.time()
        task.expires = self._clock() + self._ttl
        for question in task.questions.values():  # nobody will answer them now
            question.answered.set()

    def count(self, owner: str) -> int:
        return len(self._purged(owner))

    def _purged(self, owner: str) -> dict[str, Task]:
        own = self._by_owner.setdefault(owner, {})
        now = self._clock()
        for task_id in [t.id for t in own.values() if t.expires is not None and t.expires <= now]:
            del own[task_id]
        return own


@dataclass(frozen=True)
class TaskEnd:
    """How a task's call ended, as the task keeps it: the client's result, or a protocol error."""

    result: dict[str, Any] | None = None
    error: types.ErrorData | None = None


class TaskChannel:
    """The :class:`~mcp_guard.channel.ClientChannel` of a task's call: no client request stays open, so a question
    is parked on the task until ``tasks/update`` answers it; log and progress have nowhere to go and are dropped."""

    parked = False  # a running call: upstream traffic may be attributed to it

    def __init__(self, task: Task) -> None:
        self.channel_id = f"task:{task.id}"
        self.principal_id = task.owner
        self._task = task

    def bind(self, redecide: RedecideFn) -> None:
        """Told the call's re-decision when it is admitted (``CallContext.on_redecide``)."""
        self._task.redecide = redecide

    async def request(
        self, method: ClientMethod, params: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any] | types.ErrorData:
        """Park the question on the task; the client's answer (from ``tasks/update``), or an error.

        It is asked under ``key`` (a 2026-07-28 upstream's own) unless an open question of the task has it."""
        task = self._task
        if task.finished:
            return _no_answer(method, "the task has ended")
        lacking = missing_capability(method, params, task.caps)
        if lacking is not None:
            return types.ErrorData(
                code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                message=f"mcp-guard: the task's client did not declare what {method} needs",
                data={"requiredCapabilities": lacking},
            )
        task.asked += 1
        if not key or key in task.questions:
            key = f"{_KEY_PREFIX.get(method, 'input')}-{task.asked}"
        question = task.questions[key] = _Question(method, params)
        task.updated = time.time()
        try:
            with anyio.move_on_after(ANSWER_TIMEOUT_S):
                await question.answered.wait()
        finally:
            task.questions.pop(key, None)
            task.updated = time.time()
        if question.answer is None:
            return _no_answer(method, "no answer came" if not task.finished else "the task has ended")
        return question.answer

    async def notify_log(self, params: types.LoggingMessageNotificationParams) -> None:
        return None

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None


def _answers(task: Task, responses: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The answers of a ``tasks/update`` to the task's pending questions: each as its method's result when it is
    one (the form the policy and the upstream get), as sent otherwise (the upstream's connection refuses it)."""
    answers: dict[str, dict[str, Any]] = {}
    for key, answer in (responses or {}).items():
        question = task.questions.get(key)
        if question is None or not isinstance(answer, dict) or question.answered.is_set():
            continue
        try:
            answers[key] = REQUEST_TYPES[question.method].normalize(answer)
        except ValidationError:
            answers[key] = answer
    return answers


def _no_answer(method: ClientMethod, why: str) -> types.ErrorData:
    return types.ErrorData(code=types.INVALID_REQUEST, message=f"mcp-guard: {method} of a task got no answer: {why}")


def task_support(tool: types.Tool, upstream: UpstreamSettings | None = None) -> TaskSupport:
    """Whether mcp-guard serves ``tool`` (as its upstream lists it) as a task: ``upstream``'s ``task_tools`` entry
    for it, else its ``tasks``, else what the definition says (``execution.taskSupport``), else forbidden.

    Why the operator's word comes first: SEP-2663 makes task creation the server's decision, per request, and
    declares nothing per tool — a 2026-07-28 ``Tool`` has no ``execution``, so a stateless upstream's tools
    never say. The server a client talks to here is mcp-guard, so its config is the faithful source; a
    handshake-era upstream's own declaration is the fallback (for such an upstream the definition is its voice)."""
    configured = upstream.task_tools.get(tool.name, upstream.tasks) if upstream is not None else None
    if configured is not None:
        return TaskSupport(configured)
    execution = tool.execution
    value = execution.task_support if execution is not None else None
    return TaskSupport(value) if value is not None else TaskSupport.FORBIDDEN


def negotiated(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request's client declared the extension: a 2026-07-28 request's ``clientCapabilities``
    (the envelope in ``_meta``, or the connection's). Handshake-era clients are not offered tasks: SEP-2663 is
    a 2026-07-28 extension and their results are sieved to the 2025-11-25 shapes."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    meta = ctx.meta.get(_CLIENT_CAPABILITIES_META_KEY) if ctx.meta is not None else None
    if isinstance(meta, Mapping):
        ext = meta.get("extensions")
        if isinstance(ext, Mapping) and TASKS_EXTENSION in ext:
            return True
    caps = ctx.session.client_capabilities
    return caps is not None and caps.extensions is not None and TASKS_EXTENSION in caps.extensions


def for_upstream(caps: dict[str, Any]) -> dict[str, Any]:
    """A client's capabilities (dumped) as they may be declared to an upstream: without the tasks extension.

    mcp-guard serves tasks at the front and calls every upstream synchronously; declaring the extension upstream
    would let a 2026-07-28 upstream answer with its own ``CreateTaskResult`` — a handle to a task mcp-guard
    neither polls nor binds to a principal, whose result would never pass the result policy. Undeclared, the
    upstream must answer the call itself (or refuse it ``-32021``, which reaches the client as its error)."""
    extensions = caps.get("extensions")
    if extensions is None or not isinstance(extensions, Mapping) or TASKS_EXTENSION not in extensions:
        return caps
    kept = {k: v for k, v in extensions.items() if k != TASKS_EXTENSION}
    out = {k: v for k, v in caps.items() if k != "extensions"}
    return {**out, "extensions": kept} if kept else out


def missing_extension() -> MCPError:
    """``-32021``: the request needs the tasks extension, which its client did not declare."""
    return MCPError(
        code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"this request needs the {TASKS_EXTENSION} extension, which the client did not declare",
        data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}},
    )


def _check_name_header(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """SEP-2663 routes ``tasks/*`` by ``Mcp-Name: <taskId>``: a header that disagrees with the body is ``-32020``
    (the SDK checks the header for the core methods only). Whitespace around the value is not part of it."""
    headers = getattr(ctx.request, "headers", None)
    value = headers.get("mcp-name") if headers is not None else None
    if value is not None and value.strip() != task_id:
        raise MCPError(code=types.HEADER_MISMATCH, message="the Mcp-Name header does not match params.taskId")


def _unknown(task_id: str) -> MCPError:
    return MCPError(code=types.INVALID_PARAMS, message=f"unknown task {task_id!r}")


Work = Callable[[TaskChannel], Awaitable[TaskEnd]]
"""A task's call: run with the task's client channel, to how it ended."""


class Tasks:
    """The task table plus the background runs of task calls, and the ``tasks/*`` handlers."""

    def __init__(self, table: TaskTable | None = None) -> None:
        self.table = table or TaskTable()
        self._tg: TaskGroup | None = None

    def attach(self, tg: TaskGroup) -> None:
        """The task group background calls run in (the Guard's: they end with it)."""
        self._tg = tg

    @property
    def served(self) -> bool:
        return self._tg is not None

    async def start(
        self,
        task_id: str,
        owner: str,
        admitted: anyio.Event,
        work: Work,
        caps: types.ClientCapabilities | None = None,
    ) -> Task | TaskEnd:
        """Run ``work`` as ``owner``'s task ``task_id`` (``caps``: what the creating request's client can answer).

        Returns the task once ``admitted`` is set (the call's allow row is committed); if ``work`` ends before
        that (a deny, an obligation refused, the audit store down), its end — answered as a plain call — and
        the task is forgotten. Raises ``MCPError`` when ``owner`` has no room for another task.
        """
        assert self._tg is not None, "Tasks.attach runs before any task starts"
        task = self.table.create(task_id, owner)
        if task is None:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message="mcp-guard: too many running tasks for this principal "
                f"(at most {self.table.max_per_principal})",
            )
        task.caps = caps
        done = anyio.Event()
        ended: list[TaskEnd] = []
        self._tg.start_soon(self._drive, task, work, done, ended)
        async with anyio.create_task_group() as wait:

            async def until(event: anyio.Event) -> None:
                await event.wait()
                wait.cancel_scope.cancel()

            wait.start_soon(until, admitted)
            wait.start_soon(until, done)
        if ended and not admitted.is_set():
            self.table.drop(task)
            return ended[0]
        return task

    async def _drive(self, task: Task, work: Work, done: anyio.Event, ended: list[TaskEnd]) -> None:
        """The background run: settles the task however the call ends (cancelled included)."""
        try:
            with anyio.CancelScope() as scope:
                task.scope = scope
                end = await work(TaskChannel(task))
                ended.append(end)
                if end.error is not None:
                    error = end.error.model_dump(mode="json", by_alias=True, exclude_none=True)
                    self.table.finish(task, TaskStatus.FAILED, error=error)
                else:
                    self.table.finish(task, TaskStatus.COMPLETED, result=end.result or {"content": []})
        except Exception as e:  # a bug below must not leave the task working forever
            log.exception("task.failed", task_id=task.id)
            error = {"code": types.INTERNAL_ERROR, "message": f"mcp-guard: the task's call failed: {type(e).__name__}"}
            self.table.finish(task, TaskStatus.FAILED, error=error)
        finally:
            self.table.finish(task, TaskStatus.CANCELLED)  # no-op unless nothing above settled it
            task.scope = None
            done.set()

    # ------------------------------------------------------------------ tasks/* methods
    def _mine(self, ctx: ServerRequestContext[Any, Any], owner: str, params: TaskParams) -> Task:
        if not negotiated(ctx):
            raise missing_extension()
        _check_name_header(ctx, params.task_id)
        task = self.table.find(params.task_id, owner)
        if task is None:
            raise _unknown(params.task_id)
        return task

    def get(self, ctx: ServerRequestContext[Any, Any], owner: str, params: TaskParams) -> dict[str, Any]:
        """``tasks/get``: the task as it stands, its result or error inlined once it has one."""
        return self._mine(ctx, owner, params).detailed()

    def cancel(self, ctx: ServerRequestContext[Any, Any], owner: str, params: TaskParams) -> dict[str, Any]:
        """``tasks/cancel``: an empty ack; a running task's call is cancelled (a finished one is left as is)."""
        task = self._mine(ctx, owner, params)
        if task.scope is not None:
            task.scope.cancel()
        self.table.finish(task, TaskStatus.CANCELLED)
        return {}

    async def update(self, ctx: ServerRequestContext[Any, Any], owner: str, params: TaskParams) -> dict[str, Any]:
        """``tasks/update``: an empty ack; each answer whose key names a pending question goes to it (others, and
        answers that are not objects, are ignored — the task's next ``tasks/get`` shows what is still pending).

        The answers are put to the policy first (the call's re-decision, :mod:`mcp_guard.pipeline.redecide`): a
        deny delivers none of them and ends the task's call with the deny, which ``tasks/get`` then shows."""
        task = self._mine(ctx, owner, params)
        answers = _answers(task, params.input_responses)
        if answers and task.redecide is not None:
            decision = await task.redecide(answers)
            if not decision.allow:
                log.info("task.answers_refused", task_id=task.id, keys=sorted(answers))
                return {}
        for key, answer in answers.items():
            question = task.questions.get(key)
            if question is not None and not question.answered.is_set():
                question.answer = answer
                question.answered.set()
        return {}
