-- analytics.account_scores: each account's propensity to buy, 0–100, from the last
-- 30 days of product usage. One row per account; accounts without usage score 0.
create or replace view analytics.account_scores as
with usage as (
    select account_id,
           sum(active_users) as active_users,
           max(seats) as seats,
           count(distinct day) as active_days
    from raw.product_usage
    where day > (select max(day) from raw.product_usage) - interval 30 day
    group by account_id
)
select a.account_id,
       round(least(100.0,
           40 * coalesce(u.active_users / nullif(u.seats * u.active_days, 0), 0)
           + 2 * coalesce(u.active_days, 0)
       ), 2) as aps
from raw.crm_accounts a
left join usage u using (account_id)
