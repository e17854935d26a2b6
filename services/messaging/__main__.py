from services.messaging.app import main

main()
