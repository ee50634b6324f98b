export * from './distillation-pipeline';
export * from './definitions';
export * from './teacher-stage';
