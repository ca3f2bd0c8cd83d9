select id as customer_id, first_name || ' ' || last_name as full_name, plan, score
from {{ ref('raw_customers') }}
