/** The workflow bundle's entry: every exported function here is registered as a workflow type under its name. */
export * from './distillation-pipeline';
export * from './teacher-stage';
export * from './sweep';
