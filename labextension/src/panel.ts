/**
 * `RunsPanel`: the "wflo runs" side panel. For the active notebook it shows its
 * budgets (a bar each, spent / limit, reserved, available) and a table of its steps,
 * newest first: name, status, cost, cached calls and what they saved, duration, and a
 * link to the step's workflow in the Temporal UI, and a Cancel button on a running step
 * (the server asks Temporal, as the notebook's interrupt does). It re-renders on every change of
 * the notebook's ledger. Plain DOM with text content only (no HTML from the ledger),
 * JupyterLab's theme variables for colour, native links and a captioned table for
 * keyboard and screen-reader use.
 */

import { IBudget, IStep } from './api';
import {
  basename,
  budgetLabel,
  duration,
  levelOf,
  percent,
  spendLine,
  stepName,
  usedShare
} from './format';
import { LedgerView } from './view';

const STEP_COLUMNS = ['Step', 'Cost', 'Duration'];

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function budgetRow(budget: IBudget): HTMLElement {
  const share = usedShare(budget);
  const row = element('li', 'wflo-Budget');
  row.dataset.level = levelOf(share);
  row.dataset.kind = budget.kind;
  const head = element('div', 'wflo-Budget-head');
  head.append(
    element('span', 'wflo-Budget-name', budgetLabel(budget)),
    element('span', 'wflo-Budget-spend', spendLine(budget))
  );
  const bar = element('div', 'wflo-Bar');
  bar.setAttribute('role', 'meter');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', String(budget.limit_micros));
  bar.setAttribute('aria-valuenow', String(budget.spent_micros + budget.reserved_micros));
  bar.setAttribute('aria-label', `${budgetLabel(budget)} in use`);
  const fill = element('span', 'wflo-Bar-fill');
  fill.style.width = `${Math.min(share, 1) * 100}%`;
  bar.appendChild(fill);
  const period =
    budget.period && budget.period !== 'none' ? `, per ${budget.period}` : '';
  const detail = element(
    'div',
    'wflo-Budget-detail',
    `${percent(share)} in use · ${budget.available_usd} available${period}`
  );
  row.append(head, bar, detail);
  return row;
}

/** What the panel knows of a cancel it asked for: pending, or the server's refusal. */
type CancelState = { pending: true } | { pending: false; refusal: string };

/** One step as three cells, two lines each: name and status, cost and cache use,
 * duration and the workflow link (a narrow sidebar still shows all of them). A running
 * step also gets a Cancel button (`onCancel`). */
function stepRow(
  step: IStep,
  cancel: CancelState | undefined,
  onCancel: (step: IStep) => void
): HTMLTableRowElement {
  const row = element('tr', 'wflo-Step');
  row.dataset.status = step.status;
  row.dataset.stepId = step.id;

  const what = element('td', '');
  const name = element('div', 'wflo-Step-name', stepName(step));
  name.title = step.exit_reason
    ? `${stepName(step)}: ${step.exit_reason}`
    : stepName(step);
  const status = element('div', 'wflo-Step-status');
  status.append(element('span', `wflo-Status wflo-Status-${step.status}`, step.status));
  if (step.status === 'running') {
    const button = element(
      'button',
      'jp-Button jp-mod-styled jp-mod-warn wflo-Step-cancel',
      cancel?.pending ? 'Cancelling…' : 'Cancel'
    );
    button.type = 'button';
    button.disabled = cancel?.pending === true;
    button.setAttribute('aria-label', `Cancel step ${stepName(step)}`);
    button.addEventListener('click', () => onCancel(step));
    status.append(button);
  }
  what.append(name, status);
  if (cancel && !cancel.pending) {
    what.append(element('div', 'wflo-Step-refusal', cancel.refusal));
  }

  const money = element('td', '');
  const cost = element('div', 'wflo-Step-cost', step.cost_usd);
  cost.title = `${step.calls} LLM call${step.calls === 1 ? '' : 's'}`;
  const cached = element(
    'div',
    'wflo-Step-cached',
    step.cached_calls > 0
      ? `${step.cached_calls} cached, saved ${step.saved_usd}`
      : 'no cache hits'
  );
  money.append(cost, cached);

  const when = element('td', '');
  const took = element('div', 'wflo-Step-duration', duration(step.duration_ms));
  const workflow = element('div', 'wflo-Step-workflow');
  if (step.temporal_url) {
    const link = element('a', 'wflo-Step-link', 'Temporal');
    link.href = step.temporal_url;
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    link.title = `workflow ${step.workflow_id ?? ''} in the Temporal UI`;
    workflow.append(link);
  }
  when.append(took, workflow);

  row.append(what, money, when);
  return row;
}

export class RunsPanel extends LedgerView {
  constructor() {
    super();
    this.id = 'wflo-runs';
    this.addClass('wflo-RunsPanel');
    this.title.label = 'wflo runs';
    this.title.caption = 'wflo runs: budgets and steps of the active notebook';
    this.node.tabIndex = -1;
    this.render();
  }

  render(): void {
    const ledger = this.ledger;
    const body = element('div', 'wflo-RunsPanel-body');
    body.append(element('h2', 'wflo-RunsPanel-title', 'wflo runs'));
    if (!ledger) {
      body.append(
        element('p', 'wflo-RunsPanel-empty', 'Open a notebook to see its wflo runs.')
      );
      this._replace(body);
      return;
    }
    body.append(element('p', 'wflo-RunsPanel-notebook', basename(ledger.path)));
    if (ledger.health === 'unreachable' || ledger.health === 'refused') {
      body.append(element('p', 'wflo-RunsPanel-error', ledger.message));
    }
    if (ledger.health === 'loading') {
      body.append(element('p', 'wflo-RunsPanel-empty', 'Reading the ledger…'));
    } else if (!ledger.hasSession && ledger.health === 'live') {
      body.append(
        element(
          'p',
          'wflo-RunsPanel-empty',
          'No wflo steps for this notebook yet: run a %%wflo cell.'
        )
      );
    }
    if (ledger.budgets.length > 0) {
      const budgets = element('ul', 'wflo-Budgets');
      budgets.setAttribute('aria-label', 'budgets');
      budgets.append(...ledger.budgets.map(budgetRow));
      body.append(budgets);
    }
    if (ledger.steps.length > 0) {
      body.append(this._stepTable(ledger.steps));
    }
    this._replace(body);
  }

  private _stepTable(steps: readonly IStep[]): HTMLTableElement {
    const table = element('table', 'wflo-Steps');
    table.tabIndex = 0;
    table.append(
      element('caption', 'wflo-Steps-caption', `Steps (${steps.length}), newest first`)
    );
    const head = element('thead', '');
    const headRow = element('tr', '');
    for (const column of STEP_COLUMNS) {
      const cell = element('th', '', column);
      cell.scope = 'col';
      headRow.append(cell);
    }
    head.append(headRow);
    const rows = element('tbody', '');
    const onCancel = (step: IStep): void => void this._cancel(step);
    rows.append(
      ...steps.map(step => stepRow(step, this._cancels.get(step.id), onCancel))
    );
    table.append(head, rows);
    return table;
  }

  private async _cancel(step: IStep): Promise<void> {
    const ledger = this.ledger;
    if (!ledger || this._cancels.get(step.id)?.pending) {
      return;
    }
    this._cancels.set(step.id, { pending: true });
    this.render();
    const refusal = await ledger.cancel(step.id);
    if (refusal !== null) {
      this._cancels.set(step.id, { pending: false, refusal });
      this.render();
    } // else it stays pending: the step's end arrives on the event stream
  }

  private readonly _cancels = new Map<string, CancelState>();

  private _replace(body: HTMLElement): void {
    this.node.replaceChildren(body);
  }
}
