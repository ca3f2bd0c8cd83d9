-- A small product warehouse: users, their sessions, and the model the sync reads.
-- `today` comes from analytics.clock, so a run can be replayed "a few days later".
create schema if not exists raw;
create schema if not exists analytics;

create or replace table raw.users as
select i as user_id,
       'user' || i || '@example.com' as email,
       ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald'][1 + i % 6] as first_name,
       ['free', 'pro', 'team'][1 + (hash(i) % 3)::integer] as plan,
       (hash(i * 7) % 10) <> 0 as email_opt_in
from range(5000) t(i);

create or replace table raw.sessions as
select u.user_id,
       (select today from analytics.clock) - to_days((hash(u.user_id * 31) % 90)::integer)
         as started_at
from raw.users u;

-- Paying users who opted in to email and have not been seen for 14 to 60 days.
create or replace view analytics.reengagement_eligible as
select u.email, u.first_name, u.plan,
       datediff('day', max(s.started_at), any_value(c.today)) as days_inactive,
       max(s.started_at) as last_seen_at
from raw.users u
join raw.sessions s using (user_id)
cross join analytics.clock c
where u.email_opt_in and u.plan in ('pro', 'team')
group by u.email, u.first_name, u.plan
having datediff('day', max(s.started_at), any_value(c.today)) between 14 and 60;
