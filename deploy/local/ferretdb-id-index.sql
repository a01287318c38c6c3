-- The local stack's FerretDB 1.24 looks a document up by `_id` with
-- `_jsonb -> '_id' @> $value` (internal/backends/postgresql/query.go,
-- filterEqual: `@>` so that an array holding the value matches too, as in
-- MongoDB). Its own unique btree index on `(_jsonb -> '_id')` cannot serve
-- `@>`, so every update or find by `_id` read the whole table: the
-- persister's score upserts slowed in proportion to the players of the
-- database (~18 ms a statement at 9 000 players, docs/persister.md), where
-- MongoDB answers the same statement from its `_id` index.
--
-- This gives every table FerretDB creates a GIN index on the same expression
-- (jsonb_path_ops serves `@>`), so the local server looks `_id`s up through an
-- index as MongoDB does. It changes no result: PostgreSQL re-checks every row
-- the index returns, and FerretDB filters the rows again itself. FerretDB does
-- not know of the index (its own index metadata is a table of its own), so
-- listIndexes and the contract are unchanged.
--
-- Applied by `deploy/local/stack` at every start of PostgreSQL (idempotent):
-- the event trigger covers tables created from then on, the DO block the ones
-- already there.

create or replace function quiz_stack_id_index(tbl regclass) returns void
language plpgsql as $fn$
declare
    name text := left((select relname from pg_class where oid = tbl), 52) || '_id_gin';
begin
    -- fastupdate off: lookups never scan a pending list of recent inserts.
    execute format(
        'create index if not exists %I on %s using gin ((_jsonb -> ''_id'') jsonb_path_ops) with (fastupdate = off)',
        name, tbl);
end
$fn$;

create or replace function quiz_stack_on_create_table() returns event_trigger
language plpgsql as $fn$
declare
    r record;
begin
    for r in
        select c.objid
        from pg_event_trigger_ddl_commands() c
        where c.command_tag = 'CREATE TABLE'
          and c.object_type = 'table'
          and exists (select 1 from pg_attribute a
                      where a.attrelid = c.objid and a.attname = '_jsonb'
                        and a.atttypid = 'jsonb'::regtype and not a.attisdropped)
    loop
        perform quiz_stack_id_index(r.objid::regclass);
    end loop;
end
$fn$;

drop event trigger if exists quiz_stack_id_index;
create event trigger quiz_stack_id_index on ddl_command_end
    when tag in ('CREATE TABLE')
    execute function quiz_stack_on_create_table();

do $do$
declare
    r record;
begin
    for r in
        select a.attrelid
        from pg_attribute a
        join pg_class c on c.oid = a.attrelid and c.relkind = 'r'
        join pg_namespace n on n.oid = c.relnamespace
        where a.attname = '_jsonb' and a.atttypid = 'jsonb'::regtype and not a.attisdropped
          and n.nspname not in ('pg_catalog', 'information_schema')
    loop
        perform quiz_stack_id_index(r.attrelid::regclass);
    end loop;
end
$do$;
