/**
 * `SpendMeter`: the status-bar item. For the active notebook it shows its binding
 * budget (the one closest to its limit) as `wflo $spent / $limit`, a bar coloured at
 * 50/75/90/100%, and the reserved part; `wflo: ledger unreachable` when the ledger
 * cannot be read. A click, Enter or Space opens the runs panel.
 */

import { LedgerView } from './view';
import { budgetLabel, levelOf, percent, spendLine, usd, usedShare } from './format';

export class SpendMeter extends LedgerView {
  constructor(private readonly _open: () => void) {
    super();
    this.addClass('wflo-SpendMeter');
    this.node.tabIndex = 0;
    this.node.setAttribute('role', 'button');
    this.node.setAttribute('aria-label', 'wflo spend: open the wflo runs panel');
    this._label.className = 'wflo-SpendMeter-label';
    this._bar.className = 'wflo-Bar';
    this._fill.className = 'wflo-Bar-fill';
    this._bar.appendChild(this._fill);
    this._text.className = 'wflo-SpendMeter-text';
    this._label.textContent = 'wflo';
    this.node.append(this._label, this._bar, this._text);
    this.node.addEventListener('click', () => this._open());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        this._open();
      }
    });
  }

  /** Whether the item belongs in the status bar now. */
  get shown(): boolean {
    const ledger = this.ledger;
    if (!ledger) {
      return false;
    }
    if (ledger.health === 'unreachable' || ledger.health === 'refused') {
      return this._knownSession;
    }
    return ledger.hasSession;
  }

  render(): void {
    const ledger = this.ledger;
    this.node.dataset.health = ledger?.health ?? 'none';
    if (!ledger) {
      this._knownSession = false;
      return;
    }
    if (ledger.health === 'unreachable' || ledger.health === 'refused') {
      this._bar.hidden = true;
      this._text.textContent = ledger.message;
      this.node.title = ledger.message;
      this.node.dataset.level = 'none';
      return;
    }
    this._knownSession = ledger.hasSession;
    const budget = ledger.bindingBudget;
    if (!budget) {
      const spent = ledger.steps.reduce((sum, step) => sum + step.cost_micros, 0);
      this._bar.hidden = true;
      this._text.textContent = `${usd(spent)} spent, no budget`;
      this.node.dataset.level = 'none';
      this.node.title = 'wflo: no budget set for this notebook (%wflo budget USD)';
      return;
    }
    const share = usedShare(budget);
    const level = levelOf(share);
    this._bar.hidden = false;
    this._fill.style.width = `${Math.min(share, 1) * 100}%`;
    this._text.textContent = spendLine(budget);
    this.node.dataset.level = level;
    this.node.dataset.spentMicros = String(budget.spent_micros);
    this.node.title = ledger.budgets
      .map(b => `${budgetLabel(b)}: ${spendLine(b)}, ${percent(usedShare(b))} in use`)
      .join('\n');
  }

  private _knownSession = false;
  private readonly _label = document.createElement('span');
  private readonly _bar = document.createElement('span');
  private readonly _fill = document.createElement('span');
  private readonly _text = document.createElement('span');
}
