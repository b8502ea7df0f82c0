"""What one ``%%wflo`` cell asks for (``StepSpec``) and what it produced (``StepResult``).

Also owns parsing the ``%%wflo`` option line into a ``StepSpec``: it is pure and
stdlib-only, so the IPython layer stays a thin parse -> session -> display.
"""

from __future__ import annotations

import keyword
import math
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import quote

from wflo_jupyter.core.errors import SpecError
from wflo_jupyter.core.money import usd_to_micros
from wflo_jupyter.core.options import OptionParser

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MAX_MEMORY_BYTES = 1024**4  # 1024g
MAX_TIMEOUT_S = 30 * 24 * 3600.0  # 30 days
MIN_CPUS = 0.01  # Docker's smallest CPU share (0 would mean "no limit")
MAX_RETRIES = 100
STEP_STATUSES = ("running", "completed", "failed", "cancelled")
FINISHED_STATUSES = ("completed", "failed", "cancelled")
MAX_NAME = 255  # the ledger's steps.name and steps.image
QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512m"`` / ``"1g"`` / ``"1.5GiB"`` / ``"1048576"`` -> bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise SpecError(f"--memory: not a size: {text!r} (use e.g. 512m or 2g)")
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[unit.lower()]
    if not size <= MAX_MEMORY_BYTES:
        raise SpecError(f"--memory: at most 1024g, got {text!r}")
    return int(size)


def format_size(num_bytes: int) -> str:
    """Bytes -> the short Docker form (``512m``)."""
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return str(num_bytes)


@dataclass(frozen=True)
class StepDefaults:
    """Defaults for options a cell does not set (from ``%config WfloMagics``)."""

    budget_usd: str | None = None
    timeout_s: float = 60.0
    memory: str = "512m"
    cpus: float = 1.0
    pids_limit: int = 128
    image: str = "wflo-runtime:python3.11"
    retries: int = 0
    queue: str = ""  # a ``wflo worker``'s task queue ("": this kernel runs its steps)


@dataclass(frozen=True)
class StepSpec:
    """A parsed ``%%wflo`` cell: its code and every option, validated."""

    code: str
    budget_micros: int | None
    name: str | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    timeout_s: float
    memory_bytes: int
    cpus: float
    pids_limit: int
    image: str
    retries: int
    no_cache: bool = False
    fresh: bool = False
    estimate: bool = False
    queue: str = ""  # run on the ``wflo worker`` serving this task queue ("": here)


@dataclass
class StepInput:
    """The serialisable input of ``CellWorkflow`` (crosses the Temporal boundary)."""

    step_id: str
    session_id: str
    code: str
    name: str
    timeout_s: float
    memory_bytes: int
    cpus: float
    pids_limit: int
    image: str
    budget_micros: int | None
    retries: int = 0
    notebook_key: str = ""  # the notebook budget this step is charged to
    teams: list[str] = field(default_factory=list)  # team budgets it is also charged to
    compute_price_micros: int = 0  # per CPU-second of sandbox time
    estimate: bool = False  # a dry run (--estimate): not recorded in the ledger
    execution_count: int | None = None  # the notebook's execution count of the cell
    submit_attempt: int = 1  # the how-manieth step started for that execution count
    # the lean path: one local activity opens, runs and closes the step (no --retries,
    # not a dry run); see ``CellWorkflow``
    lean: bool = False
    # the task queue of the ``wflo worker`` that runs it ("": the kernel's own worker)
    task_queue: str = ""
    no_cache: bool = False  # --no-cache, for a worker that answers the cell's LLM calls
    # how long the step's close is retried while the ledger is unreachable (its record,
    # sandbox seconds included, is written when the ledger is back)
    close_retry_s: float = 600.0

    @property
    def workflow_id(self) -> str:
        """One id per cell execution, ``wflo-step-{session}-{execution_count}-{attempt}``,
        so a start sent twice finds the first run instead of starting another (a dry run:
        ``wflo-estimate-...``). Without an execution count (not from a notebook cell), the
        step id stands in for it."""
        kind = "estimate" if self.estimate else "step"
        if self.execution_count is None:
            return f"wflo-{kind}-{self.step_id}"
        return f"wflo-{kind}-{self.session_id}-{self.execution_count}-{self.submit_attempt}"

    def budget_scopes(self) -> list[tuple[str, str]]:
        """``(kind, key)`` of every budget enclosing this step, narrowest first."""
        scopes: list[tuple[str, str]] = []
        if self.budget_micros is not None:
            scopes.append(("cell", self.step_id))
        if self.notebook_key:
            scopes.append(("notebook", self.notebook_key))
        scopes.extend(("team", team) for team in self.teams)
        return scopes


@dataclass
class StepResult:
    """The outcome of one step, as recorded in the ledger and shown in the cell."""

    step_id: str
    status: str  # "completed" | "failed" | "cancelled" (see STEP_STATUSES)
    exit_code: int | None
    exit_reason: str  # "ok" | "error" | "timeout" | "oom" | "killed" | "sandbox"
    stdout: str = ""
    stderr: str = ""
    error_name: str = ""
    error_value: str = ""
    traceback: str = ""
    duration_s: float = 0.0
    sandbox_seconds: float = 0.0
    workflow_id: str = ""
    cost_micros: int = 0
    events: list[str] = field(default_factory=list)
    attempts: int = 1  # how many times ``execute`` ran (infrastructure retries)
    recorded: bool = False  # the lean path closed the step in the ledger itself
    worker_queue: str = ""  # the own task queue of the ``wflo worker`` that ran it

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    @classmethod
    def of_cancel(cls, step_id: str, *, state_lost: bool, seconds: float = 0.0) -> StepResult:
        """A step the analyst interrupted; ``state_lost``: the cell did not stop, so its
        sandbox was killed. The reason is the line the cell shows."""
        if state_lost:
            reason = (
                "the cell did not stop when interrupted, so its sandbox was killed; state was lost"
            )
        else:
            reason = "the cell was interrupted; the sandbox and its state are kept"
        return cls(
            step_id=step_id,
            status="cancelled",
            exit_code=None,
            exit_reason="killed" if state_lost else "interrupted",
            error_name="StepCancelled",
            error_value=reason,
            sandbox_seconds=seconds,
            duration_s=seconds,
        )


def _build_parser() -> OptionParser:
    parser = OptionParser("%%wflo")
    parser.add_argument("--budget", default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--in", dest="inputs", default="")
    parser.add_argument("--out", dest="outputs", default="")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--memory", default=None)
    parser.add_argument("--cpus", type=float, default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--retries", type=int, default=None)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--estimate", action="store_true")
    parser.add_argument("--queue", default=None)
    return parser


def _names(option: str, text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise SpecError(f"{option}: {name!r} is not a Python variable name")
    return names


def _queue(name: str) -> str:
    """A task queue name as given (``""``: none); one line when it cannot be one."""
    name = name.strip()
    if name and not QUEUE_NAME.fullmatch(name):
        raise SpecError(
            f"--queue: {name!r} is not a task queue name (letters, digits, '.', '_', '-', "
            "at most 100)"
        )
    return name


def parse_step_spec(line: str, code: str, defaults: StepDefaults | None = None) -> StepSpec:
    """Parse the ``%%wflo`` option ``line`` for ``code``; raise ``SpecError`` (one line)."""
    defaults = defaults or StepDefaults()
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise SpecError(f"%%wflo: cannot parse options: {exc}") from None
    args = _build_parser().parse(argv)

    budget_text = args.budget if args.budget is not None else defaults.budget_usd
    try:
        budget = usd_to_micros(budget_text) if budget_text is not None else None
    except ValueError as exc:
        raise SpecError(f"--budget: {exc}") from None
    timeout = args.timeout if args.timeout is not None else defaults.timeout_s
    if not timeout > 0:
        raise SpecError(f"--timeout: must be a positive number of seconds, got {timeout:g}")
    if not timeout <= MAX_TIMEOUT_S:
        raise SpecError(f"--timeout: at most {MAX_TIMEOUT_S:.0f} s (30 days), got {timeout:g}")
    cpus = args.cpus if args.cpus is not None else defaults.cpus
    if not cpus > 0:
        raise SpecError(f"--cpus: must be positive, got {cpus:g}")
    if not MIN_CPUS <= cpus < math.inf:
        raise SpecError(f"--cpus: at least {MIN_CPUS:g} and finite, got {cpus:g}")
    memory = parse_size(args.memory if args.memory is not None else defaults.memory)
    if memory < 16 * 1024**2:
        raise SpecError(f"--memory: at least 16m is needed, got {memory} bytes")
    retries = args.retries if args.retries is not None else defaults.retries
    if retries < 0:
        raise SpecError(f"--retries: cannot be negative, got {retries}")
    if retries > MAX_RETRIES:
        raise SpecError(f"--retries: at most {MAX_RETRIES}, got {retries}")
    name = args.name
    if name is not None and not name.strip():
        raise SpecError("--name: cannot be empty")
    if name is not None and len(name) > MAX_NAME:
        raise SpecError(f"--name: at most {MAX_NAME} characters, got {len(name)}")
    if args.image is not None and len(args.image) > MAX_NAME:
        raise SpecError(f"--image: at most {MAX_NAME} characters, got {len(args.image)}")
    if not code.strip():
        raise SpecError("%%wflo: the cell has no code to run")
    queue = _queue(args.queue if args.queue is not None else defaults.queue)
    if queue and (args.inputs or args.outputs):
        raise SpecError(
            f"--queue {queue}: --in/--out values stay in this kernel; a worker's cell "
            "cannot receive or return them"
        )
    return StepSpec(
        code=code,
        budget_micros=budget,
        name=name,
        inputs=_names("--in", args.inputs),
        outputs=_names("--out", args.outputs),
        timeout_s=timeout,
        memory_bytes=memory,
        cpus=cpus,
        pids_limit=defaults.pids_limit,
        image=args.image or defaults.image,
        retries=retries,
        no_cache=args.no_cache,
        fresh=args.fresh,
        estimate=args.estimate,
        queue=queue,
    )


def workflow_link(ui: str | None, namespace: str, workflow_id: str | None) -> str | None:
    """A step's workflow in the Temporal web UI at ``ui``, when both are known."""
    if not ui or not workflow_id:
        return None
    safe_namespace, safe_id = quote(namespace, safe=""), quote(workflow_id, safe="")
    return f"{ui.rstrip('/')}/namespaces/{safe_namespace}/workflows/{safe_id}"
