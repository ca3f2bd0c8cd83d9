select plan, count(*) as customers from {{ ref('customers') }} group by plan
