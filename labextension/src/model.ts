/**
 * `NotebookLedger`: what the ledger holds about one notebook, kept live.
 *
 * It loads the notebook's budgets and steps over REST, then follows the server's
 * event stream: a `budget` event replaces that budget at once (no round trip); a
 * `step` event refetches budgets and steps (coalesced: the step may have charged a team
 * budget the notebook had not used before, and reading the budgets makes the server
 * follow it); a `resync` refetches both. When the
 * stream ends or fails it reconnects with a growing pause (0.5 s up to 10 s); the
 * server sends `resync` first on every new stream, so nothing changed meanwhile is
 * missed. `changed` fires after every change the views should show.
 */
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  IBudget,
  IStep,
  LedgerEvent,
  UNREACHABLE,
  WfloApiError,
  cancelStep,
  fetchBudgets,
  fetchSteps,
  followEvents
} from './api';

/** `loading` until the first answer, then `live`, or `unreachable` (and retrying). */
export type LedgerHealth = 'loading' | 'live' | 'unreachable' | 'refused';

const STEP_REFETCH_DELAY_MS = 50;
const FIRST_RETRY_MS = 500;
const LAST_RETRY_MS = 10_000;

export class NotebookLedger implements IDisposable {
  constructor(
    readonly path: string,
    private readonly _settings: ServerConnection.ISettings
  ) {
    void this._run();
  }

  /** The notebook's budgets: its own first, then its teams'. */
  get budgets(): readonly IBudget[] {
    return this._budgets;
  }

  /** The notebook's steps, newest first. */
  get steps(): readonly IStep[] {
    return this._steps;
  }

  get health(): LedgerHealth {
    return this._health;
  }

  /** The one line to show when the ledger cannot be read or the server refused. */
  get message(): string {
    return this._message;
  }

  /** Whether the ledger knows this notebook: a budget or a step of it exists. */
  get hasSession(): boolean {
    return this._budgets.length > 0 || this._steps.length > 0;
  }

  /** The budget closest to refusing a call (highest share of its limit in use). */
  get bindingBudget(): IBudget | null {
    let binding: IBudget | null = null;
    let highest = -1;
    for (const budget of this._budgets) {
      const used = budget.spent_micros + budget.reserved_micros;
      const share = budget.limit_micros > 0 ? used / budget.limit_micros : Infinity;
      if (share > highest) {
        highest = share;
        binding = budget;
      }
    }
    return binding;
  }

  /** Fires after the budgets, the steps or the health changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._abort.signal.aborted;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._abort.abort();
    window.clearTimeout(this._stepTimer);
    Signal.clearData(this);
  }

  /** Cancel the running step `stepId`; resolves to null when the server asked Temporal,
   * else to the server's one-line refusal. */
  async cancel(stepId: string): Promise<string | null> {
    try {
      await cancelStep(this._settings, this.path, stepId);
      return null;
    } catch (error) {
      return error instanceof Error ? error.message : String(error);
    }
  }

  /** Refetch budgets and steps now. */
  async refresh(): Promise<void> {
    try {
      const [budgets, steps] = await Promise.all([
        fetchBudgets(this._settings, this.path),
        fetchSteps(this._settings, this.path)
      ]);
      if (this.isDisposed) {
        return;
      }
      this._budgets = budgets;
      this._steps = steps;
      this._setHealth('live', '');
    } catch (error) {
      this._failed(error);
    }
  }

  private async _run(): Promise<void> {
    let pause = FIRST_RETRY_MS;
    const signal = this._abort.signal;
    while (!signal.aborted) {
      let heard = false;
      try {
        await followEvents(
          this._settings,
          this.path,
          event => {
            heard = true;
            this._apply(event);
          },
          signal
        );
      } catch (error) {
        if (signal.aborted) {
          return;
        }
        this._failed(error);
        if (error instanceof WfloApiError && error.status === 400) {
          return; // the path itself is refused: retrying cannot help
        }
      }
      if (heard) {
        pause = FIRST_RETRY_MS;
      }
      await new Promise(resolve => window.setTimeout(resolve, pause));
      pause = Math.min(pause * 2, LAST_RETRY_MS);
    }
  }

  private _apply(event: LedgerEvent): void {
    switch (event.type) {
      case 'resync':
        void this.refresh();
        break;
      case 'budget':
        this._replaceBudget(event.budget);
        break;
      case 'step':
        this._refreshSoon();
        break;
      case 'unreachable':
        this._setHealth('unreachable', event.message || UNREACHABLE);
        break;
    }
  }

  private _replaceBudget(budget: IBudget): void {
    const index = this._budgets.findIndex(
      b => b.key === budget.key && b.kind === budget.kind
    );
    const budgets = this._budgets.slice();
    if (index >= 0) {
      budgets[index] = budget;
    } else {
      budgets.push(budget);
    }
    this._budgets = budgets;
    this._setHealth('live', '');
  }

  private _refreshSoon(): void {
    window.clearTimeout(this._stepTimer);
    this._stepTimer = window.setTimeout(() => void this.refresh(), STEP_REFETCH_DELAY_MS);
  }

  private _failed(error: unknown): void {
    if (this.isDisposed) {
      return;
    }
    if (error instanceof WfloApiError && error.status !== 503) {
      this._setHealth('refused', error.message);
    } else {
      this._setHealth('unreachable', UNREACHABLE);
    }
  }

  private _setHealth(health: LedgerHealth, message: string): void {
    this._health = health;
    this._message = message;
    this._changed.emit();
  }

  private _budgets: IBudget[] = [];
  private _steps: IStep[] = [];
  private _health: LedgerHealth = 'loading';
  private _message = '';
  private _stepTimer = 0;
  private readonly _abort = new AbortController();
  private readonly _changed = new Signal<this, void>(this);
}
