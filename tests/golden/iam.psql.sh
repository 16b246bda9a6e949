psql "host=127.0.0.1 port=5433 dbname=app user=iam_user sslmode=require connect_timeout=15"
#NOTE (stderr) IAM auth: the password is a token valid 15 minutes; `tunnelman psql` / `tunnelman exec` fetch one for you
