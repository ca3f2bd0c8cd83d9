select customer_id, score, score >= 90 as top from {{ ref('customers') }}
