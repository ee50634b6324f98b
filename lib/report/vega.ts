/**
 * Vega-Lite charts rendered to SVG, headless: compiled by `vega-lite`, laid out by a `vega` View with no renderer and
 * serialised with `toSVG()`. Headless because reports are built on workers and in CI, with no browser, no canvas
 * package (a native build) and no network: text widths are estimated rather than measured, which is close enough for
 * axis labels and legends. Spec in, SVG string out: sweeps and run reports share it.
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { InputError } from '../errors';

export type { TopLevelSpec as VegaLiteSpec };

/**
 * Renders a Vega-Lite spec to a standalone SVG document (inline data only: a spec that names a URL is refused, as a
 * renderer that fetches would break the no-network rule).
 * @throws InputError when the spec loads data from a URL.
 */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  if (JSON.stringify(spec).includes('"url"')) {
    throw new InputError('the chart spec loads data from a URL; expected inline values', 'spec.data');
  }
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
