"""Object-store servers for the S3 and GCS integration tests, on loopback.

Run as `objstore.py s3` (moto's S3 server, SigV4 verified once auth is
turned on) or `objstore.py gcs` (gcp-storage-emulator). Prints one JSON line
(port and credentials), then answers one JSON command per stdin line with
"ok" or "error: ...". Exits when stdin closes.
"""
import json
import sys
import threading


def s3():
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    url = f"http://127.0.0.1:{port}"

    def client(service, ident, secret, token=None):
        return boto3.client(
            service,
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=ident,
            aws_secret_access_key=secret,
            aws_session_token=token,
        )

    iam = client("iam", "setup", "setup")
    allow_s3 = json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    )
    keys = {}
    for user in ["admin", "reader"]:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=allow_s3)
        k = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"id": k["AccessKeyId"], "secret": k["SecretAccessKey"]}
    trust = json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    )
    role = iam.create_role(RoleName="reader-role", AssumeRolePolicyDocument=trust)["Role"]
    iam.put_role_policy(RoleName="reader-role", PolicyName="s3", PolicyDocument=allow_s3)
    sts = client("sts", keys["admin"]["id"], keys["admin"]["secret"])
    c = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="test")["Credentials"]
    keys["session"] = {"id": c["AccessKeyId"], "secret": c["SecretAccessKey"], "token": c["SessionToken"]}
    admin = client("s3", keys["admin"]["id"], keys["admin"]["secret"])

    def handle(cmd):
        op = cmd["op"]
        if op == "bucket":
            admin.create_bucket(Bucket=cmd["bucket"])
        elif op == "put":
            with open(cmd["file"], "rb") as f:
                admin.put_object(Bucket=cmd["bucket"], Key=cmd["key"], Body=f.read(),
                                 ACL="public-read" if cmd.get("public") else "private")
        elif op == "auth":
            # From now on every request is authenticated: SigV4 checked
            # against the IAM keys above, the policy applied.
            requests.post(f"{url}/moto-api/reset-auth", data=b"0").raise_for_status()
        else:
            raise ValueError(f"unknown op {op}")

    return {"port": port, "keys": keys}, handle


def gcs():
    from gcp_storage_emulator.server import create_server
    from gcp_storage_emulator.handlers import buckets
    import requests

    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    url = f"http://127.0.0.1:{port}"

    def handle(cmd):
        op = cmd["op"]
        if op == "bucket":
            buckets.create_bucket(cmd["bucket"], server._storage)
        elif op == "put":
            with open(cmd["file"], "rb") as f:
                r = requests.post(
                    f"{url}/upload/storage/v1/b/{cmd['bucket']}/o",
                    params={"uploadType": "media", "name": cmd["key"]},
                    data=f.read(),
                    headers={"Content-Type": "application/octet-stream"},
                )
            r.raise_for_status()
        else:
            raise ValueError(f"unknown op {op}")

    return {"port": port}, handle


def main():
    hello, handle = {"s3": s3, "gcs": gcs}[sys.argv[1]]()
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            handle(json.loads(line))
            print("ok", flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the test
            print(f"error: {type(e).__name__}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    threading.stack_size(1 << 20)
    main()
