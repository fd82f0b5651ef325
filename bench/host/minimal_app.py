"""Row (g) of the bench: the smallest FastAPI app with a /health route, served by the same
gunicorn and kit worker as the example app, so the difference is the app's own cost."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}
