"""Static checks of docker-compose.yml and the Dockerfile (no container engine needed)."""
