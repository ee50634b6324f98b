/**
 * The one place activity dependencies are wired. Workers call `createActivities(deps)`; workflows see only the
 * `Activities` interface in `contract/`, so none of this reaches the workflow bundle. Each entry binds one stage
 * module's function to its dependencies, under the name Temporal schedules it by.
 */
import type { Client } from '@temporalio/client';
import type { Activities } from '../contract';
import type { ArtifactStore } from '../lib/store/artifact-store';
import type { ApiKeyLookup, ScriptedTeacherProvider } from '../lib/teacher/stage';
import { sample } from './sample';
import {
  collectTeacherBatch,
  finishTeacher,
  planTeacher,
  pollTeacherBatch,
  submitTeacherBatch,
  teacherShard,
} from './prompt-teacher';
import { validateRationales } from './validate-rationales';
import { trainStudent } from './train-student';
import { evaluate } from './evaluate';
import { registerModel } from './register-model';
import { decideGate, planGate, promoteVersion, recordApproval, resolveInit } from './gate';
import { teacherOnEvalSet } from './teacher-eval';
import { checkRefresh, resolveWarmStart } from './refresh';
import { withOpenLineage } from './openlineage';
import { withQueueWait } from './metrics';
import { finishSweep, planSweep } from './sweep';
import { writeRunReport } from './report';
import { parseSpec } from './spec';

export interface ActivityDeps {
  store: ArtifactStore;
  /** Used to signal step-level progress to the workflow; optional (tests may leave it out). */
  client?: Client;
  /** Starts (once) the local OpenAI-compatible server that plays the demo's teacher. */
  scripted: ScriptedTeacherProvider;
  /** Recorded in every registered model's lineage. */
  codeVersion: string;
  /** A teacher API key by the name of its environment variable (`teacher.apiKeyEnv`), read on this worker. */
  apiKey: ApiKeyLookup;
  /**
   * The folders spec-named files must lie under (`STEPWISE_DATA_ROOTS`). Workers always set it (workers/deps.ts);
   * left out, as tests wiring activities by hand do, paths are not confined.
   */
  dataRoots?: readonly string[];
}

export function createActivities(deps: ActivityDeps): Activities {
  // Every pipeline stage emits its OpenLineage events (activities/openlineage.ts), whatever the stage; a sweep's
  // own activities read and summarise runs that emitted theirs, and produce no dataset of their own.
  const stages = withOpenLineage(deps, {
    sample: (spec) => sample(deps.store, spec, deps.dataRoots),
    planTeacher: (input) => planTeacher(deps, input),
    teacherShard: (input) => teacherShard(deps, input),
    submitTeacherBatch: (input) => submitTeacherBatch(deps, input),
    pollTeacherBatch: (input) => pollTeacherBatch(deps, input),
    collectTeacherBatch: (input) => collectTeacherBatch(deps, input),
    finishTeacher: (input) => finishTeacher(deps, input),
    validateRationales: (input) => validateRationales(deps.store, input),
    trainStudent: (input) => trainStudent(deps, input),
    evaluate: (input) => evaluate(deps, input),
    registerModel: (input) => registerModel(deps, input),
    resolveInit: (ref) => resolveInit(deps, ref),
    checkRefresh: (input) => checkRefresh(deps, input),
    resolveWarmStart: (ref) => resolveWarmStart(deps, ref),
    planGate: (input) => planGate(deps, input),
    teacherOnEvalSet: (input) => teacherOnEvalSet(deps, input),
    decideGate: (input) => decideGate(deps, input),
    recordApproval: (input) => recordApproval(deps, input),
    promoteVersion: (input) => promoteVersion(deps, input),
    // The report is made from the run's artifacts (its inputs) and is one itself (its output).
    writeRunReport: (input) => writeRunReport(deps, input),
  });
  // Every activity records how long it waited in its task queue (activities/metrics.ts).
  return {
    ...withQueueWait<Omit<Activities, 'parseSpec'>>({
      ...stages,
      planSweep: (def) => planSweep(deps.store, def, deps.dataRoots),
      finishSweep: (input) => finishSweep(deps.store, input),
    }),
    // A local activity, so it waits in no task queue; it reads and writes no dataset.
    parseSpec,
  };
}

export type { Activities };
