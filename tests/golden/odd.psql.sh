psql 'host=127.0.0.1 port=5433 dbname='"'"'my db:\'"'"'x\'"'"''"'"' user='"'"'o\'"'"'brien\\ @x%é'"'"' sslmode=prefer sslrootcert='"'"'/home/ana/certs dir/ca.pem'"'"' connect_timeout=15'
