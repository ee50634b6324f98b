/**
 * The gate's teacher comparison: the teacher's accuracy on the frozen evaluation set the candidate and the champion
 * are compared on (`lib/teacher/eval-set.ts`). A thin adapter: error mapping, a heartbeat every second, cancellation.
 */
import { Context } from '@temporalio/activity';

import { teacherAccuracyOn, type TeacherEvalInput, type TeacherEvalResult } from '../lib/teacher/eval-set';
import type { ScriptedTeacherProvider } from '../lib/teacher/stage';
import type { ArtifactStore } from '../lib/store/artifact-store';
import { mapErrors, withKeepalive } from './progress';

/** What the activity needs from its worker: the store, the scripted demo teacher, the data roots. */
export interface TeacherEvalActivityDeps {
  store: ArtifactStore;
  scripted: ScriptedTeacherProvider;
  dataRoots?: readonly string[];
}

/**
 * Measure the teacher on the evaluation set where that costs nothing (recorded or scripted answers); an endpoint
 * teacher is reported as not measured, without a call. Cancellation aborts the scripted calls in flight.
 */
export async function teacherOnEvalSet(
  deps: TeacherEvalActivityDeps,
  input: TeacherEvalInput
): Promise<TeacherEvalResult> {
  return mapErrors(() =>
    withKeepalive(() => teacherAccuracyOn(deps.store, deps, input, { signal: Context.current().cancellationSignal }))
  );
}
