/**
 * wflo-jupyter's JupyterLab extension: a status-bar spend meter and a "wflo runs"
 * side panel for the active notebook, both fed by one `NotebookLedger` (the wflo
 * server extension's REST API and event stream, read from the ledger).
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';

import { NotebookLedger } from './model';
import { RunsPanel } from './panel';
import { SpendMeter } from './statusbar';

const OPEN_RUNS = 'wflo-jupyter:open-runs';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'wflo-jupyter:plugin',
  description: 'wflo spend meter in the status bar and the wflo runs panel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ICommandPalette, ILabShell, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null
  ) => {
    const settings = ServerConnection.makeSettings();
    const panel = new RunsPanel();
    app.shell.add(panel, 'right', { rank: 900 });
    restorer?.add(panel, 'wflo-runs'); // a reload reopens it where it was

    app.commands.addCommand(OPEN_RUNS, {
      label: 'Show wflo runs',
      caption: 'Budgets and steps of the active notebook',
      execute: () => {
        if (labShell) {
          labShell.expandRight();
        }
        app.shell.activateById(panel.id);
      }
    });
    palette?.addItem({ command: OPEN_RUNS, category: 'wflo' });

    const meter = new SpendMeter(() => void app.commands.execute(OPEN_RUNS));
    const meterShown = new Signal<SpendMeter, void>(meter);
    statusBar?.registerStatusItem('wflo-jupyter:spend', {
      item: meter,
      align: 'left',
      rank: 50,
      isActive: () => meter.shown,
      activeStateChanged: meterShown
    });

    let ledger: NotebookLedger | null = null;
    const show = (notebook: NotebookPanel | null): void => {
      const path = notebook?.context.path ?? null;
      if (ledger && ledger.path === path) {
        return;
      }
      ledger?.dispose();
      ledger = path ? new NotebookLedger(path, settings) : null;
      ledger?.changed.connect(() => meterShown.emit());
      meter.ledger = ledger;
      panel.ledger = ledger;
      meterShown.emit();
    };
    notebooks.currentChanged.connect((_, notebook) => show(notebook));
    notebooks.widgetAdded.connect((_, notebook) => {
      notebook.context.pathChanged.connect(() => {
        if (notebooks.currentWidget === notebook) {
          show(notebook);
        }
      });
    });
    show(notebooks.currentWidget);
  }
};

export default plugin;
