-- Accounts, product events, and the usage model the sync reads.
create schema if not exists raw;
create schema if not exists analytics;

create or replace table raw.accounts as
select 'acct-' || lpad(i::varchar, 4, '0') as account_id,
       ['Acme', 'Globex', 'Initech', 'Umbrella', 'Hooli', 'Stark'][1 + i % 6] || ' ' || i as name,
       'company' || i || '.example.com' as domain,
       ['free', 'pro', 'enterprise'][1 + (hash(i) % 3)::integer] as plan
from range(600) t(i);

-- 30 days of product events: who used which feature when.
create or replace table raw.events as
select a.account_id,
       (hash(a.account_id, n) % 12)::integer as user_id,
       ['reports', 'api', 'sso', 'exports'][1 + (hash(n, a.account_id) % 4)::integer] as feature,
       (select today from analytics.clock) - to_minutes((hash(a.account_id, n, 7) % 43200)::integer)
         as happened_at
from raw.accounts a, range(0, 1 + (hash(a.account_id) % 40)::integer) t(n)
where hash(a.account_id, 'active') % 10 <> 0;   -- one account in ten never used the product

create or replace view analytics.company_usage as
with usage as (
  select account_id,
         count(distinct user_id) filter (
           where happened_at >= (select today from analytics.clock) - interval 7 days) as weekly_active_users,
         max(happened_at) as last_seen_at,
         list_sort(list_distinct(list(feature))) as features_used
  from raw.events group by account_id
)
select a.account_id, a.name, a.domain, a.plan as plan_tier, a.plan <> 'free' as is_paying,
       coalesce(u.weekly_active_users, 0) as weekly_active_users,
       round(least(100, coalesce(u.weekly_active_users, 0) * 8.5
                        + len(coalesce(u.features_used, []::varchar[])) * 5), 1)
         as product_health_score,
       u.last_seen_at::date as last_active_date,
       u.last_seen_at,
       coalesce(u.features_used, []::varchar[]) as features_used
from raw.accounts a left join usage u using (account_id);
