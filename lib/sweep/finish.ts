/**
 * A sweep's result: the table (JSON and Markdown) and the accuracy-vs-fraction plot (SVG), stored by content, and
 * one small named record, `sweeps/<sweepId>/result.json`, that points at them, so `stepwise sweep result` finds a
 * sweep's result in the store long after Temporal has forgotten the finished workflow.
 */
import { checkRunId } from '../registry/names';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import { renderSvg } from '../report/vega';
import { summarizeSweep, sweepMarkdown, sweepPlotSpec, type SweepCell, type SweepMeta } from './summary';

export interface FinishSweepInput {
  sweepId: string;
  cells: SweepCell[];
  meta: SweepMeta;
}

/** Where a finished sweep's artifacts are: references and their URIs (a path for a filesystem store). */
export interface SweepArtifacts {
  sweepId: string;
  summary: ArtifactRef;
  markdown: ArtifactRef;
  plot: ArtifactRef;
  uris: { summary: string; markdown: string; plot: string; record: string };
  /** Cells that finished (trained now or reused) and that failed. */
  finished: number;
  failed: number;
}

/** The store key of a sweep's result record. */
export const sweepResultKey = (sweepId: string) => `sweeps/${checkRunId(sweepId, 'sweepId')}/result.json`;

/**
 * Builds and stores the table and the plot, then the record naming them. Idempotent: the artifacts are content
 * addressed and the record is rewritten with the same content by a retry.
 * @throws InputError when a cell's figures are malformed (the summary refuses NaN accuracies and the like).
 */
export async function finishSweep(store: ArtifactStore, input: FinishSweepInput): Promise<SweepArtifacts> {
  const key = sweepResultKey(input.sweepId);
  const summary = summarizeSweep(input.cells, input.meta);
  const svg = await renderSvg(sweepPlotSpec(summary));
  const [summaryRef, markdownRef, plotRef] = await Promise.all([
    store.putJson(summary),
    store.put(sweepMarkdown(summary), 'text/markdown; charset=utf-8'),
    store.put(svg, 'image/svg+xml'),
  ]);
  const artifacts: SweepArtifacts = {
    sweepId: input.sweepId,
    summary: summaryRef,
    markdown: markdownRef,
    plot: plotRef,
    uris: {
      summary: store.uri(summaryRef),
      markdown: store.uri(markdownRef),
      plot: store.uri(plotRef),
      record: store.uri(key),
    },
    finished: input.cells.filter((c) => c.status !== 'failed').length,
    failed: input.cells.filter((c) => c.status === 'failed').length,
  };
  await store.putKey(key, JSON.stringify({ ...artifacts, meta: input.meta }, null, 2), {
    contentType: 'application/json',
  });
  return artifacts;
}

/** A finished sweep's record, or undefined when the store has none under that id. */
export async function readSweepResult(
  store: ArtifactStore,
  sweepId: string
): Promise<(SweepArtifacts & { meta: SweepMeta }) | undefined> {
  return store.getKeyJson(sweepResultKey(sweepId));
}
