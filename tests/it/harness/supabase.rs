//! A Supabase-shaped database, built by the cluster's superuser: the
//! platform's roles (`supabase_admin`, `supabase_auth_admin`,
//! `supabase_storage_admin`, `anon`, `authenticated`, `service_role`,
//! `authenticator`), the `auth`, `storage`, `realtime` and `extensions`
//! schemas owned by the platform, RLS policies, a trigger on `auth.users`
//! that fills `public.profiles`, default privileges and the
//! `supabase_realtime` publication, plus the customer's role [`CUSTOMER`]:
//! not a superuser; `LOGIN CREATEDB CREATEROLE REPLICATION BYPASSRLS`,
//! member of the auth and storage admin roles (not of `supabase_admin`) and
//! of `pg_read_all_data`, as Supabase's `postgres` role is.
//!
//! Roles are cluster-wide: use a cluster of your own ([`PgCluster::start`]).

use super::postgres::PgCluster;

/// The customer's role (Supabase calls it `postgres`; here the superuser is).
pub const CUSTOMER: &str = "customer";
/// Its password.
pub const CUSTOMER_PASSWORD: &str = "customer-pass";

/// The tables of the fixture, `schema.name`, in a stable order.
pub const TABLES: &[&str] = &[
    "auth.users",
    "auth.refresh_tokens",
    "storage.buckets",
    "storage.objects",
    "realtime.schema_migrations",
    "public.profiles",
    "public.todos",
    "public.messages",
];

/// Cluster-wide roles.
pub const ROLES_SQL: &str = "
CREATE ROLE supabase_admin SUPERUSER LOGIN CREATEDB CREATEROLE REPLICATION BYPASSRLS;
CREATE ROLE supabase_auth_admin NOINHERIT CREATEROLE LOGIN;
CREATE ROLE supabase_storage_admin NOINHERIT CREATEROLE LOGIN;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator NOINHERIT LOGIN;
GRANT anon, authenticated, service_role TO authenticator;
CREATE ROLE customer LOGIN CREATEDB CREATEROLE REPLICATION BYPASSRLS PASSWORD 'customer-pass';
GRANT supabase_auth_admin, supabase_storage_admin TO customer;
GRANT anon, authenticated, service_role TO customer;
GRANT pg_read_all_data TO customer;
";

/// The platform's schemas, extensions and tables (run by the superuser in
/// the database). Empty tables: a fresh project.
pub const PLATFORM_SQL: &str = "
CREATE SCHEMA extensions AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role, customer, supabase_auth_admin, supabase_storage_admin;
CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
CREATE EXTENSION \"uuid-ossp\" WITH SCHEMA extensions;

CREATE SCHEMA auth AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT ALL ON SCHEMA auth TO supabase_auth_admin;
SET ROLE supabase_auth_admin;
CREATE TABLE auth.users (
    instance_id uuid, id uuid PRIMARY KEY, aud varchar(255), role varchar(255),
    email varchar(255) UNIQUE, encrypted_password varchar(255), raw_user_meta_data jsonb,
    created_at timestamptz DEFAULT now(), updated_at timestamptz);
CREATE TABLE auth.refresh_tokens (
    id bigserial PRIMARY KEY, token varchar(255), user_id varchar(255), revoked boolean, created_at timestamptz);
CREATE INDEX refresh_tokens_token_idx ON auth.refresh_tokens (token);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT SELECT ON auth.users TO service_role;
RESET ROLE;

CREATE SCHEMA storage AUTHORIZATION supabase_admin;
GRANT ALL ON SCHEMA storage TO supabase_storage_admin;
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
SET ROLE supabase_storage_admin;
CREATE TABLE storage.buckets (id text PRIMARY KEY, name text NOT NULL, owner uuid, created_at timestamptz DEFAULT now(), public boolean DEFAULT false);
CREATE TABLE storage.objects (
    id uuid DEFAULT extensions.uuid_generate_v4() PRIMARY KEY, bucket_id text REFERENCES storage.buckets (id),
    name text, owner uuid, metadata jsonb, created_at timestamptz DEFAULT now());
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
GRANT ALL ON storage.objects TO anon, authenticated, service_role;
GRANT ALL ON storage.buckets TO anon, authenticated, service_role;
RESET ROLE;

CREATE SCHEMA realtime AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role, customer;
SET ROLE supabase_admin;
CREATE TABLE realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0) without time zone);
RESET ROLE;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE customer IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE customer IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE customer IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
CREATE PUBLICATION supabase_realtime;
ALTER PUBLICATION supabase_realtime OWNER TO customer;
";

/// The customer's own objects (run as [`CUSTOMER`]).
pub const CUSTOMER_SQL: &str = "
CREATE TABLE public.profiles (
    id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    username text UNIQUE, avatar_url text, updated_at timestamptz);
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY \"Public profiles are viewable by everyone.\" ON public.profiles FOR SELECT USING (true);
CREATE POLICY \"Users can update own profile.\" ON public.profiles FOR UPDATE USING (auth.uid() = id);
CREATE TABLE public.todos (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, user_id uuid NOT NULL REFERENCES auth.users (id),
    task text CHECK (char_length(task) > 3), is_complete boolean DEFAULT false, inserted_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE public.todos ENABLE ROW LEVEL SECURITY;
CREATE POLICY \"Individuals can view their own todos.\" ON public.todos FOR SELECT USING (auth.uid() = user_id);
CREATE TABLE public.messages (id bigserial PRIMARY KEY, profile_id uuid REFERENCES public.profiles (id), body text, created_at timestamptz DEFAULT now());
ALTER PUBLICATION supabase_realtime ADD TABLE public.messages;
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
    AS $$ BEGIN INSERT INTO public.profiles (id, username) VALUES (new.id, new.raw_user_meta_data->>'username'); RETURN new; END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN new.updated_at := now(); RETURN new; END $$;
CREATE TRIGGER profiles_touch BEFORE UPDATE ON public.profiles FOR EACH ROW EXECUTE FUNCTION public.touch();
";

/// Rows (run by the superuser): users (whose trigger fills profiles), tokens, buckets, objects, todos, messages.
pub const DATA_SQL: &str = "
INSERT INTO auth.users (id, aud, role, email, raw_user_meta_data, created_at)
    SELECT extensions.uuid_generate_v5(extensions.uuid_nil(), 'u' || g), 'authenticated', 'authenticated',
           'user' || g || '@example.com', jsonb_build_object('username', 'user' || g), '2026-01-01'::timestamptz + g * interval '1 hour'
    FROM generate_series(1, 50) g;
INSERT INTO auth.refresh_tokens (token, user_id, revoked, created_at)
    SELECT md5(g::text), g::text, g % 3 = 0, '2026-01-02'::timestamptz FROM generate_series(1, 120) g;
INSERT INTO storage.buckets (id, name, public) VALUES ('avatars', 'avatars', true), ('docs', 'docs', false);
INSERT INTO storage.objects (id, bucket_id, name, metadata)
    SELECT extensions.uuid_generate_v5(extensions.uuid_nil(), 'o' || g), CASE WHEN g % 2 = 0 THEN 'avatars' ELSE 'docs' END,
           'file' || g, jsonb_build_object('size', g * 10) FROM generate_series(1, 40) g;
INSERT INTO realtime.schema_migrations VALUES (20211116024918, '2026-01-01'), (20211116045059, '2026-01-01');
INSERT INTO public.todos (user_id, task) SELECT id, 'task for ' || email FROM auth.users;
INSERT INTO public.messages (profile_id, body) SELECT id, 'hello from ' || username FROM public.profiles;
";

/// Create the roles (once per cluster).
pub async fn create_roles(cluster: &PgCluster) {
    cluster.execute("postgres", ROLES_SQL).await;
}

/// Make `db` (already created) a Supabase-shaped database owned by the
/// customer, with data. The roles must exist ([`create_roles`]).
pub async fn populate(cluster: &PgCluster, db: &str) {
    cluster.execute("postgres", &format!("ALTER DATABASE {db} OWNER TO {CUSTOMER}")).await;
    cluster.execute(db, PLATFORM_SQL).await;
    cluster.execute(db, &format!("SET ROLE {CUSTOMER}; {CUSTOMER_SQL}")).await;
    cluster.execute(db, DATA_SQL).await;
}

/// A "new project": database `db` with the platform's schemas, extensions
/// and tables, empty, and nothing of the customer's.
pub async fn new_project(cluster: &PgCluster, db: &str) {
    cluster.execute("postgres", &format!("ALTER DATABASE {db} OWNER TO {CUSTOMER}")).await;
    cluster.execute(db, PLATFORM_SQL).await;
}
