import type { ReactNode } from 'react';
import type { JsonObject, JsonValue } from '../../services/api/devices';

const isObject = (value: unknown): value is JsonObject =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

interface JsonViewProps {
  value: JsonValue;
  /**
   * A delta over `value` (SPEC §4 shape): keys present in it are highlighted, recursing
   * where both sides are objects, so only the differing leaves are marked.
   */
  highlight?: JsonObject;
  label: string;
}

/** Pretty-printed JSON (two-space indent, as JSON.stringify) with optional delta marks. */
export function JsonView({ value, highlight, label }: JsonViewProps) {
  return (
    <pre className="json-view" aria-label={label} tabIndex={0}>
      <code>{renderValue(value, highlight, 0, [])}</code>
    </pre>
  );
}

function renderValue(value: JsonValue, highlight: JsonObject | undefined, depth: number, path: string[]): ReactNode {
  if (Array.isArray(value)) {
    if (value.length === 0) return <span className="json-punct">[]</span>;
    const indent = '  '.repeat(depth + 1);
    return (
      <>
        <span className="json-punct">[</span>
        {'\n'}
        {value.map((item, index) => (
          <span key={index}>
            {indent}
            {renderValue(item, undefined, depth + 1, [...path, String(index)])}
            {index < value.length - 1 ? ',' : ''}
            {'\n'}
          </span>
        ))}
        {'  '.repeat(depth)}
        <span className="json-punct">]</span>
      </>
    );
  }
  if (isObject(value)) {
    const keys = Object.keys(value);
    if (keys.length === 0) return <span className="json-punct">{'{}'}</span>;
    const indent = '  '.repeat(depth + 1);
    return (
      <>
        <span className="json-punct">{'{'}</span>
        {'\n'}
        {keys.map((key, index) => {
          const child = value[key] as JsonValue;
          const inDelta = highlight !== undefined && Object.prototype.hasOwnProperty.call(highlight, key);
          const childDelta = inDelta ? highlight[key] : undefined;
          // Where both sides are objects the delta recurses: mark the differing leaves, not the parent.
          const recurse = inDelta && isObject(child) && isObject(childDelta);
          const keyText = <span className="json-key">{JSON.stringify(key)}</span>;
          return (
            <span key={key}>
              {indent}
              {inDelta && !recurse ? (
                <mark className="delta-key" data-delta-path={[...path, key].join('/')} title="Not yet applied by the device">
                  {keyText}
                  <span className="visually-hidden"> (not yet applied by the device)</span>
                </mark>
              ) : (
                keyText
              )}
              <span className="json-punct">: </span>
              {renderValue(child, recurse ? (childDelta as JsonObject) : undefined, depth + 1, [...path, key])}
              {index < keys.length - 1 ? ',' : ''}
              {'\n'}
            </span>
          );
        })}
        {'  '.repeat(depth)}
        <span className="json-punct">{'}'}</span>
      </>
    );
  }
  return <span className={`json-${value === null ? 'null' : typeof value}`}>{JSON.stringify(value)}</span>;
}
