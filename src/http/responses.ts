import { Type, type TSchema } from 'typebox';

/**
 * Response schemas shared by the route plugins. Fastify serialises a declared status with fast-json-stringify,
 * which leaves out every field the schema does not name: a field a client reads must be declared here.
 */

export const Nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

/** Every refusal: `{errcode, error}` (contract section 5), with `retry_after_ms` on M_LIMIT_EXCEEDED. */
export const MatrixErrorBody = Type.Object({ errcode: Type.String(), error: Type.String(), retry_after_ms: Type.Optional(Type.Integer()) });

/** The error answers every route may give (the one error handler sends them). */
export const errorResponses = { '4xx': MatrixErrorBody, '5xx': MatrixErrorBody };
