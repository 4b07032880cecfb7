import type { SchemaErrorDetail } from '../../services/api/devices';

const RULE_HINTS: Record<string, string> = {
  type: 'wrong type',
  enum: 'not one of the allowed values',
  const: 'must be exactly the allowed value',
  required: 'a required key is missing',
  additionalProperties: 'key not allowed by the model',
  minimum: 'too small',
  maximum: 'too large',
  exclusiveMinimum: 'too small',
  exclusiveMaximum: 'too large',
  minLength: 'too short',
  maxLength: 'too long',
  pattern: 'does not match the pattern',
  format: 'wrong format',
  minItems: 'too few items',
  maxItems: 'too many items',
  multipleOf: 'not a multiple of the step',
};

interface SchemaErrorsProps {
  detail: SchemaErrorDetail;
  /** What was refused, e.g. "Not saved". */
  title?: string;
}

/** A model-schema refusal (422): each failed rule with the JSON pointer it failed at. */
export function SchemaErrors({ detail, title = 'Not saved: the device model refuses this desired state.' }: SchemaErrorsProps) {
  return (
    <div role="alert" className="alert alert--error schema-errors" aria-label="Schema validation errors">
      <p>
        <strong>{title}</strong> {detail.message}.
      </p>
      <ul>
        {detail.errors.map((violation, index) => (
          <li key={`${violation.pointer}-${violation.rule}-${index}`} data-pointer={violation.pointer}>
            <code className="schema-pointer" title={`JSON pointer ${violation.pointer || '""'}`}>
              {violation.pointer === '' ? '(whole document)' : violation.pointer}
            </code>{' '}
            {violation.rule && (
              <span className="schema-rule">
                rule <code>{violation.rule}</code>
                {RULE_HINTS[violation.rule] ? ` (${RULE_HINTS[violation.rule]})` : ''}
              </span>
            )}
            {violation.message && <span className="schema-message">: {violation.message}</span>}
          </li>
        ))}
      </ul>
    </div>
  );
}
